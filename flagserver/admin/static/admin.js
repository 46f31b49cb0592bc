// The admin pages' JavaScript: small, dependency-free, and optional — every form also
// works without it (the server asks for confirmation in a second step instead).
// - list editors (rules, conditions, stages, guardrails): add, remove, reorder, with
//   input names renumbered to the API's field paths (rules[1].conditions[0].op);
// - the percentage slider and number box kept in sync;
// - confirmation dialogs for forms marked data-confirm, and for 0% / 100%;
// - focus on error summaries and notices after a refused change.
"use strict";

(function () {
  function fieldId(name) {
    return "f-" + name.replace(/[^A-Za-z0-9_-]/g, "-").split("-").filter(Boolean).join("-");
  }

  function announce(text) {
    var region = document.getElementById("announcer");
    if (region) {
      region.textContent = "";
      window.setTimeout(function () { region.textContent = text; }, 30);
    }
  }

  // -- list editors ---------------------------------------------------------------------

  function itemsOf(list) {
    return Array.prototype.filter.call(list.children, function (el) { return el.hasAttribute("data-item"); });
  }

  // The path of an element: one "list[index]" per enclosing item, outermost first.
  function pathOf(el, form) {
    var parts = [];
    var node = el.parentElement;
    while (node && node !== form) {
      if (node.hasAttribute("data-item")) {
        var list = node.parentElement;
        parts.unshift(list.getAttribute("data-list") + "[" + itemsOf(list).indexOf(node) + "]");
      }
      node = node.parentElement;
    }
    return parts.join(".");
  }

  function renumber(form) {
    form.querySelectorAll("[data-name]").forEach(function (el) {
      var base = pathOf(el, form);
      var name = (base ? base + "." : "") + el.getAttribute("data-name");
      var id = fieldId(name) + (el.hasAttribute("data-suffix") ? "-" + el.getAttribute("data-suffix") : "");
      if (el.tagName === "LABEL") {
        el.htmlFor = id;
      } else {
        el.name = name;
        el.id = id;
      }
    });
    form.querySelectorAll("[data-list]").forEach(function (list) {
      var items = itemsOf(list);
      items.forEach(function (item, i) {
        item.querySelectorAll("[data-number]").forEach(function (n) {
          // Only numbers that belong to this item, not to a nested one.
          if (n.closest("[data-item]") === item) { n.textContent = String(i + 1); }
        });
        var up = item.querySelector(':scope > .rule-tools [data-action="up"]');
        var down = item.querySelector(':scope > .rule-tools [data-action="down"]');
        if (up) { up.disabled = i === 0; }
        if (down) { down.disabled = i === items.length - 1; }
      });
      if (list.getAttribute("data-list") === "rules") {
        var note = form.querySelector("[data-empty-note]");
        if (note) { note.hidden = items.length > 0; }
      }
    });
  }

  function uniqueRuleId(form) {
    var taken = {};
    form.querySelectorAll("[data-rule-id]").forEach(function (el) { taken[el.value] = true; });
    var n = 1;
    while (taken["rule-" + n]) { n += 1; }
    return "rule-" + n;
  }

  function firstControl(el) {
    return el.querySelector("input:not([type=hidden]), select, textarea");
  }

  function onEditorClick(event) {
    var button = event.target.closest("button[data-action]");
    if (!button) { return; }
    var form = button.form || button.closest("form");
    var action = button.getAttribute("data-action");
    if (action === "add") {
      var template = document.getElementById(button.getAttribute("data-template"));
      var into = button.getAttribute("data-into");
      var list = into ? form.querySelector('[data-list="' + into + '"]')
        : button.parentElement.querySelector(":scope > [data-list]");
      var fragment = template.content.cloneNode(true);
      var item = fragment.querySelector("[data-item]");
      list.appendChild(fragment);
      var ruleId = item.querySelector("[data-rule-id]");
      if (ruleId && !ruleId.value) { ruleId.value = uniqueRuleId(form); }
      renumber(form);
      var control = firstControl(item);
      if (control) { control.focus(); }
      announce((item.getAttribute("data-kind") || "item") + " added");
      return;
    }
    var current = button.closest("[data-item]");
    if (!current) { return; }
    var parent = current.parentElement;
    var kind = current.getAttribute("data-kind") || "item";
    if (action === "remove") {
      var siblings = itemsOf(parent);
      var index = siblings.indexOf(current);
      current.remove();
      renumber(form);
      var rest = itemsOf(parent);
      var next = rest[Math.min(index, rest.length - 1)];
      var focusTarget = next ? firstControl(next) : form.querySelector('[data-action="add"]');
      if (focusTarget) { focusTarget.focus(); }
      announce(kind + " removed");
    } else if (action === "up" || action === "down") {
      var items = itemsOf(parent);
      var at = items.indexOf(current);
      if (action === "up" && at > 0) {
        parent.insertBefore(current, items[at - 1]);
      } else if (action === "down" && at < items.length - 1) {
        parent.insertBefore(items[at + 1], current);
      } else {
        return;
      }
      renumber(form);
      var again = current.querySelector('[data-action="' + action + '"]');
      (again && !again.disabled ? again : button).focus();
      announce(kind + " moved to position " + (itemsOf(parent).indexOf(current) + 1));
    }
  }

  function onEditorChange(event) {
    var serve = event.target.closest("[data-serve]");
    if (serve) {
      var rule = serve.closest("[data-item]");
      var split = rule.querySelector("[data-split-only]");
      if (split) { split.hidden = serve.value !== "__split__"; }
    }
  }

  // -- the percentage control -------------------------------------------------------------

  function setUpPercentage(form) {
    var range = form.querySelector("[data-range]");
    var number = form.querySelector("[data-number]");
    if (range && number) {
      range.hidden = false;
      range.addEventListener("input", function () { number.value = range.value; });
      number.addEventListener("input", function () {
        var value = parseFloat(number.value);
        if (!isNaN(value)) { range.value = String(Math.max(0, Math.min(100, value))); }
      });
    }
    form.querySelectorAll("[data-kind-radio]").forEach(function (radio) {
      radio.addEventListener("change", function () {
        form.querySelectorAll("[data-kind-panel]").forEach(function (panel) {
          panel.hidden = panel.getAttribute("data-kind-panel") !== radio.value;
        });
      });
    });
  }

  function edgeConfirmation(form) {
    if (!form.hasAttribute("data-percentage-form")) { return null; }
    var kind = form.querySelector('[name="rollout_kind"]:checked') || form.querySelector('[name="rollout_kind"]');
    if (kind && kind.value !== "percentage") { return null; }
    var number = form.querySelector("[data-number]");
    var value = parseFloat(number.value);
    var current = parseFloat(form.getAttribute("data-current"));
    if ((value === 0 || value === 100) && value !== current) {
      return {
        message: value === 100
          ? "Every user whom no rule matches will get the flag. Set it to 100%?"
          : "Nobody will get the flag through the percentage any more. Set it to 0%?",
        label: "Set to " + value + "%"
      };
    }
    return null;
  }

  // -- confirmations ----------------------------------------------------------------------

  function confirmThen(message, label, proceed) {
    var dialog = document.getElementById("confirm-dialog");
    if (!dialog || typeof dialog.showModal !== "function") {
      if (window.confirm(message)) { proceed(); }
      return;
    }
    document.getElementById("confirm-message").textContent = message;
    document.getElementById("confirm-ok").textContent = label || "Confirm";
    dialog.returnValue = "";
    dialog.addEventListener("close", function onClose() {
      dialog.removeEventListener("close", onClose);
      if (dialog.returnValue === "ok") { proceed(); }
    });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  }

  function onSubmit(event) {
    var form = event.target;
    var confirmed = form.querySelector('input[name="confirmed"]');
    if (!confirmed || confirmed.value === "1") { return; }
    var ask = null;
    if (form.hasAttribute("data-confirm")) {
      ask = { message: form.getAttribute("data-confirm"), label: form.getAttribute("data-confirm-label") };
    } else {
      ask = edgeConfirmation(form);
    }
    if (!ask) { return; }
    event.preventDefault();
    confirmThen(ask.message, ask.label, function () {
      confirmed.value = "1";
      form.submit();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-editor]").forEach(function (form) {
      form.addEventListener("click", onEditorClick);
      form.addEventListener("change", onEditorChange);
      renumber(form);
    });
    document.querySelectorAll("form[data-percentage-form]").forEach(setUpPercentage);
    document.addEventListener("submit", onSubmit);
    var focus = document.querySelector("[data-focus-on-load]");
    if (focus) { focus.focus(); }
  });
}());
