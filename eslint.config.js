// ESLint for the clinician's page (api/web/*.js): plain ES modules in the browser, no build.
// `make lint` runs it (after `npm ci` when node_modules is missing).
import js from "@eslint/js";
import globals from "globals";

export default [
  js.configs.recommended,
  {
    files: ["api/web/**/*.js"],
    languageOptions: {
      ecmaVersion: 2024,
      sourceType: "module",
      globals: { ...globals.browser },
    },
    rules: {
      "no-unused-vars": ["error", { argsIgnorePattern: "^_", caughtErrors: "none", ignoreRestSiblings: true }],
      eqeqeq: ["error", "always"],
      "no-var": "error",
      "prefer-const": "error",
      "no-implicit-globals": "error",
      "no-shadow": "error",
      // Callbacks may name a module-level binding declared further down (wired before use).
      "no-use-before-define": ["error", { functions: false, classes: false, variables: false }],
      "no-console": "error",
    },
  },
  {
    // A classic script, run before first paint (not a module).
    files: ["api/web/theme.js"],
    languageOptions: { sourceType: "script" },
  },
];
