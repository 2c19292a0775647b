// Drives Hearth's registration, "add to my account" and consent pages in headless Chromium as
// a caregiver would (run by tests/browser.rs; see there for how to run it by hand).
//
// Usage: node register.mjs '<json>' where the JSON object has
//   registerUrl        the registration link of the first invitation
//   addUrl             the registration link of a second invitation, added to the same account
//   birthDate          the caregiver's birth date on record (YYYY-MM-DD)
//   wrongBirthDate     a birth date that is not
//   username, password the account to create (the password strong enough)
//   weakPassword       a password the page must refuse
//   authorizeUrl       the full /auth/authorize URL of a portal app (launch/patient)
//   choose             the text of the patient choice to pick on the consent page
//   callbackUrl        the redirect URI (without query); the run ends when the browser reaches it
//   chromium           the Chromium executable (default /usr/bin/chromium)
//
// On success it prints one JSON object on stdout:
//   { alerts: {birthDate, password}, created, added, choices: [{value, label}], finalUrl }
// Failures are reported as harness.mjs says.

import { fail, run } from "./harness.mjs";

async function main(args, { page, step }) {
  const fields = ["registerUrl", "addUrl", "birthDate", "wrongBirthDate", "username", "password", "weakPassword"];
  for (const field of [...fields, "authorizeUrl", "choose", "callbackUrl"]) {
    if (typeof args[field] !== "string" || args[field] === "") fail(`argument field ${field} is missing`);
  }
  const newAccount = page.locator('form[action="/auth/register"]:not(:has(input[name="existing"]))');
  const existingAccount = page.locator('form[action="/auth/register"]:has(input[name="existing"])');

  // Fills a registration form and submits it; answers the status of the POST.
  async function submit(form, birthDate, password) {
    await form.locator('input[name="birth_date"]').fill(birthDate);
    await form.locator('input[name="username"]').fill(args.username);
    await form.locator('input[name="password"]').fill(password);
    const posted = page.waitForResponse(
      (r) => r.request().method() === "POST" && new URL(r.url()).pathname === "/auth/register",
    );
    await form.locator('button[type="submit"]').click();
    const status = (await posted).status();
    await page.waitForLoadState("load");
    return status;
  }
  async function alertText() {
    const alert = page.locator('[role="alert"]');
    await alert.waitFor({ state: "visible" });
    return (await alert.innerText()).trim();
  }

  step("opening the registration link");
  const opened = await page.goto(args.registerUrl, { waitUntil: "load" });
  if (opened === null || opened.status() !== 200) fail(`status ${opened?.status()}, expected 200`);
  if ((await newAccount.count()) !== 1) fail("no form to create an account");
  if ((await newAccount.locator('input[name="password"]').getAttribute("type")) !== "password") {
    fail("the password input is not type=password");
  }

  step("registering with a wrong birth date");
  let status = await submit(newAccount, args.wrongBirthDate, args.password);
  if (status !== 401) fail(`answered ${status}, expected 401`);
  const birthDateAlert = await alertText();

  step("registering with a weak password");
  status = await submit(newAccount, args.birthDate, args.weakPassword);
  if (status !== 400) fail(`answered ${status}, expected 400`);
  const passwordAlert = await alertText();

  step("registering");
  status = await submit(newAccount, args.birthDate, args.password);
  if (status !== 201) fail(`answered ${status}, expected 201`);
  const created = (await page.locator("h1").innerText()).trim();

  step("adding the second invitation to the account");
  const second = await page.goto(args.addUrl, { waitUntil: "load" });
  if (second === null || second.status() !== 200) fail(`status ${second?.status()}, expected 200`);
  if ((await existingAccount.count()) !== 1) fail("no form to add the invitation to an account");
  status = await submit(existingAccount, args.birthDate, args.password);
  if (status !== 200) fail(`answered ${status}, expected 200`);
  const added = (await page.locator("h1").innerText()).trim();

  step("opening the app's authorize URL (signed in: the consent page, no sign-in)");
  await page.goto(args.authorizeUrl, { waitUntil: "load" });
  if ((await page.locator('form[action="/auth/login"]').count()) !== 0) fail("asked to sign in again");
  await page.locator('button[type="submit"][name="decision"][value="allow"]').waitFor({ state: "visible" });
  const radios = page.locator('input[type="radio"][name="patient"]');
  await radios.first().waitFor({ state: "visible" });
  const choices = [];
  for (const radio of await radios.all()) {
    const label = (await radio.locator("xpath=..").innerText()).trim();
    choices.push({ value: await radio.getAttribute("value"), label });
  }

  step(`choosing ${args.choose} and allowing`);
  await page.getByLabel(args.choose).check();
  await Promise.all([
    page.waitForURL((url) => url.href.split("?")[0] === args.callbackUrl, { waitUntil: "load" }),
    page.locator('button[type="submit"][name="decision"][value="allow"]').click(),
  ]);

  return { alerts: { birthDate: birthDateAlert, password: passwordAlert }, created, added, choices, finalUrl: page.url() };
}

await run("register.mjs", main);
