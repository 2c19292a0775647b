// Drives Hearth's login and consent pages in headless Chromium through a standalone SMART
// launch (run by tests/browser.rs; see there for how to run it by hand).
//
// Usage: node launch.mjs '<json>' where the JSON object has
//   authorizeUrl   the full /auth/authorize URL to open
//   username       the portal user
//   password       the right password (a wrong one is tried first)
//   untick         a scope whose consent checkbox is unticked before Allow
//   callbackUrl    the redirect URI (without query); the run ends when the browser reaches it
//   chromium       the Chromium executable (default /usr/bin/chromium)
//
// On success it prints one JSON object on stdout:
//   { finalUrl, alert, scopesShown, cookies, callbackText }
// Failures are reported as harness.mjs says.

import { fail, run } from "./harness.mjs";

async function main(args, { page, context, step }) {
  for (const field of ["authorizeUrl", "username", "password", "untick", "callbackUrl"]) {
    if (typeof args[field] !== "string" || args[field] === "") fail(`argument field ${field} is missing`);
  }
  const wrongPassword = `${args.password}-wrong`;

  step("opening the authorize URL");
  const opened = await page.goto(args.authorizeUrl, { waitUntil: "load" });
  if (opened === null || opened.status() !== 200) fail(`status ${opened?.status()}, expected 200`);
  const username = page.locator('input[name="username"]');
  const password = page.locator('input[name="password"]');
  const signIn = page.locator('form[action="/auth/login"] button[type="submit"]');
  await username.waitFor({ state: "visible" });
  await password.waitFor({ state: "visible" });
  if ((await page.locator('[role="alert"]').count()) !== 0) fail("the fresh login page already shows an alert");
  if ((await password.getAttribute("type")) !== "password") fail("the password input is not type=password");

  step("signing in with a wrong password");
  await username.fill(args.username);
  await password.fill(wrongPassword);
  const rejected = page.waitForResponse(
    (r) => r.request().method() === "POST" && new URL(r.url()).pathname === "/auth/login",
  );
  await signIn.click();
  const rejection = await rejected;
  if (rejection.status() !== 401) fail(`login POST answered ${rejection.status()}, expected 401`);
  await page.waitForLoadState("load");

  step("waiting for the wrong-password alert");
  const alertBox = page.locator('[role="alert"]');
  await alertBox.waitFor({ state: "visible" });
  const alert = (await alertBox.innerText()).trim();
  if (alert === "") fail("the alert is empty");
  if (new URL(page.url()).pathname === "/auth/consent") fail("a wrong password reached the consent page");

  step("signing in with the right password");
  await username.fill(args.username);
  await password.fill(args.password);
  await Promise.all([page.waitForURL((url) => url.pathname === "/auth/consent", { waitUntil: "load" }), signIn.click()]);

  step("reading the consent page");
  const boxes = page.locator('input[type="checkbox"][name="scope"]');
  await boxes.first().waitFor({ state: "visible" });
  const scopesShown = [];
  for (const box of await boxes.all()) {
    const value = await box.getAttribute("value");
    if (!(await box.isChecked())) fail(`scope ${value} is not ticked by default`);
    scopesShown.push(value);
  }
  if (!scopesShown.includes(args.untick)) fail(`no checkbox for ${args.untick}; shown: ${scopesShown.join(" ")}`);

  step(`unticking ${args.untick}`);
  const box = page.locator(`input[type="checkbox"][name="scope"][value="${args.untick}"]`);
  await box.uncheck();
  if (await box.isChecked()) fail("the checkbox stayed ticked");

  step("reading the cookies");
  const cookies = await context.cookies();

  step("clicking Allow and waiting for the callback");
  const allow = page.locator('button[type="submit"][name="decision"][value="allow"]');
  if ((await page.locator('button[type="submit"][name="decision"][value="deny"]').count()) !== 1) {
    fail("no Deny button");
  }
  await Promise.all([
    page.waitForURL((url) => url.href.split("?")[0] === args.callbackUrl, { waitUntil: "load" }),
    allow.click(),
  ]);
  const callbackText = (await page.locator("body").innerText()).trim();

  return { finalUrl: page.url(), alert, scopesShown, cookies, callbackText };
}

await run("launch.mjs", main);
