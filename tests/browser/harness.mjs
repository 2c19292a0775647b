// What the browser scripts share (run by tests/browser.rs): headless Chromium, a name for the
// step under way, and on failure "<script>: <step>: <message>" with the page's URL and text on
// stderr and exit status 1. Every step waits at most 15 s; the whole run at most 90 s.
//
// A script calls run(name, main): main(args, { page, context, step }) gets the parsed JSON
// argument, does its steps (naming each with step("…")), and returns the report that is
// printed as one JSON line on stdout.

import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 15_000;
const RUN_TIMEOUT_MS = 90_000;

export function fail(message) {
  throw new Error(message);
}

async function describe(page) {
  if (!page) return "";
  try {
    const text = (await page.locator("body").innerText({ timeout: 2_000 })).trim().slice(0, 1_000);
    return `\n  page URL: ${page.url()}\n  page text: ${text}`;
  } catch {
    return `\n  page URL: ${page.url()}`;
  }
}

export async function run(name, main) {
  let current = "reading the arguments";
  let browser;
  let page;
  const watchdog = setTimeout(() => {
    process.stderr.write(`${name}: ${current}: the whole run took over ${RUN_TIMEOUT_MS / 1000} s\n`);
    process.exit(1);
  }, RUN_TIMEOUT_MS);
  let status = 0;
  try {
    const args = JSON.parse(process.argv[2] ?? fail("expected one JSON argument"));
    current = "starting Chromium";
    browser = await chromium.launch({
      executablePath: args.chromium ?? "/usr/bin/chromium",
      headless: true,
      timeout: STEP_TIMEOUT_MS,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const context = await browser.newContext();
    page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
    const report = await main(args, { page, context, step: (named) => (current = named) });
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } catch (error) {
    status = 1;
    process.stderr.write(`${name}: ${current}: ${error?.message ?? error}${await describe(page)}\n`);
  } finally {
    await browser?.close().catch(() => {});
    clearTimeout(watchdog);
  }
  process.exit(status);
}
