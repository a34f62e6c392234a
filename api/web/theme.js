// Runs before first paint (classic script in <head>): apply the saved theme, or the system's.
(function () {
  "use strict";
  const KEY = "neuroscan.theme";
  let saved = null;
  try { saved = window.localStorage.getItem(KEY); } catch (e) { /* storage blocked: follow the system */ }
  const prefersDark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  const theme = saved === "dark" || saved === "light" ? saved : (prefersDark ? "dark" : "light");
  document.documentElement.setAttribute("data-theme", theme);
})();
