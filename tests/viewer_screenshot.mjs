// Drive the avatarsdk viewer in headless Chromium: load the page, move one morph slider to 0
// and to 1, and screenshot the 3D canvas each time. Used by tests/test_viewer.py.
//
//   node tests/viewer_screenshot.mjs URL OUTDIR MORPH
//
// The browser is the Chromium shipped inside the npm package @sparticuz/chromium (a compressed
// binary in the tarball, unpacked to the temp folder on first use), driven by puppeteer-core;
// both are pinned in package.json and installed by `npm ci`. AVATARSDK_CHROME=/path/to/chromium
// uses another Chromium instead (e.g. Debian's `chromium`).
//
// Prints one JSON object on stdout:
//   {browser, morphNames, sliders, state, status, errors: [..], shots: {"0": path, "1": path}, ms: {..}}
// Exit codes: 0 done (the caller judges errors), 3 no usable browser (message on stderr), 1 other failures.

import { mkdirSync } from 'node:fs';
import path from 'node:path';

const [url, outDir, morph] = process.argv.slice(2);
if (!url || !outDir || !morph) {
  console.error('usage: node viewer_screenshot.mjs URL OUTDIR MORPH');
  process.exit(1);
}
const t0 = Date.now();
const ms = {};

function unavailable(what, e) {
  console.error(`no usable browser: ${what}: ${e && e.message ? e.message.split('\n')[0] : e}`);
  process.exit(3);
}

let puppeteer, executablePath, args;
try {
  puppeteer = (await import('puppeteer-core')).default;
} catch (e) {
  unavailable('cannot import puppeteer-core (run `npm ci`)', e);
}
if (process.env.AVATARSDK_CHROME) {
  executablePath = process.env.AVATARSDK_CHROME;
  args = ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'];
} else {
  try {
    const chromium = (await import('@sparticuz/chromium')).default;
    executablePath = await chromium.executablePath();
    args = chromium.args;
  } catch (e) {
    unavailable('cannot unpack @sparticuz/chromium (run `npm ci`)', e);
  }
}
ms.unpack = Date.now() - t0;

let browser;
try {
  browser = await puppeteer.launch({
    executablePath,
    args,
    headless: 'shell',
    defaultViewport: { width: 960, height: 640, deviceScaleFactor: 1 },
  });
} catch (e) {
  unavailable(`cannot launch ${executablePath}`, e);
}
ms.launch = Date.now() - t0;

const errors = [];
try {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn') errors.push(`console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => errors.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) errors.push(`HTTP ${r.status()}: ${r.url()}`);
  });

  await page.goto(url, { waitUntil: 'load', timeout: 30000 });
  await page.waitForFunction(() => document.body.dataset.state !== 'loading', { timeout: 30000 });
  ms.loaded = Date.now() - t0;
  const state = await page.evaluate(() => document.body.dataset.state);
  const status = await page.evaluate(() => document.getElementById('status').textContent);
  const result = { browser: await browser.version(), state, status, errors, shots: {}, ms };
  if (state === 'ready') {
    result.morphNames = await page.evaluate(() => window.viewer.morphNames());
    result.sliders = await page.$$eval('input[data-morph]', (els) => els.map((e) => e.dataset.morph));
    mkdirSync(outDir, { recursive: true });
    const canvas = await page.$('#view canvas');
    for (const value of ['0', '1']) {
      // Move the slider as a user would: set its value and fire its input event.
      await page.$eval(`input[data-morph="${morph}"]`, (el, v) => {
        el.value = v;
        el.dispatchEvent(new Event('input', { bubbles: true }));
      }, value);
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      const file = path.join(outDir, `${morph}-${value}.png`);
      await canvas.screenshot({ path: file });
      result.shots[value] = file;
    }
    ms.shots = Date.now() - t0;
  }
  console.log(JSON.stringify(result));
} catch (e) {
  console.error(`viewer_screenshot failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
