// DeepExec dashboard: the little the pages do in the browser besides htmx.
(function () {
  "use strict";

  // Live output keeps at most this much in the page; older output is dropped from the view
  // (the download link and the final result have it all).
  var MAX_LIVE_CHARS = 256 * 1024;
  var MAX_LIVE_NODES = 2000;

  function highlight(root) {
    if (!window.hljs) return;
    root.querySelectorAll("pre code[class*='language-']").forEach(function (el) {
      if (!el.dataset.highlighted) window.hljs.highlightElement(el);
    });
  }

  function boundLiveOutput(pre) {
    var chars = 0;
    var nodes = pre.childNodes;
    for (var i = 0; i < nodes.length; i++) chars += nodes[i].textContent.length;
    var trimmed = false;
    while (nodes.length > 1 && (nodes.length > MAX_LIVE_NODES || chars > MAX_LIVE_CHARS)) {
      chars -= pre.firstChild.textContent.length;
      pre.removeChild(pre.firstChild);
      trimmed = true;
    }
    if (trimmed) {
      var note = document.getElementById("output-trimmed");
      if (note) note.hidden = false;
    }
  }

  function watchLiveOutput() {
    var pre = document.getElementById("live-output");
    if (!pre || !window.MutationObserver) return;
    new MutationObserver(function () { boundLiveOutput(pre); })
      .observe(pre, { childList: true });
  }

  function selectAll() {
    var all = document.getElementById("select-all");
    if (!all) return;
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name='job']").forEach(function (box) {
        if (!box.disabled) box.checked = all.checked;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    highlight(document);
    watchLiveOutput();
    selectAll();
  });
})();
