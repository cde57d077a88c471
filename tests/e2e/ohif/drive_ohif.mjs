// Drive OHIF Viewer v3 in headless Chromium (playwright-core) against the gateway, for
// tests/e2e/test_ohif.py: open the study list, open a study, read the viewport's pixels, scroll,
// and record every request the viewer makes to the gateway. The pytest side makes the
// assertions; this script only observes and writes one JSON result (argv[3], and stdout).
//
// Usage: node drive_ohif.mjs <input.json> <result.json>
// input: { nodeModules, chromium, userDataDir, viewerUrl, gatewayUrl, studyTexts: [..],
//          studies: [{ name, uid, scrollSteps }], artifactDir, timeoutMs }

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const resultPath = process.argv[3];
const require = createRequire(path.join(input.nodeModules, 'resolve-from-here.js'));
const { chromium } = require('playwright-core');

const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const result = {
  ok: false,
  error: null,
  steps: [],
  requests: [],
  console: [],
  pageErrors: [],
  studyListText: '',
  studies: {},
  screenshots: [],
};

let phase = 'start';
const log = message => {
  result.steps.push(`${new Date().toISOString()} ${message}`);
  process.stderr.write(`drive_ohif: ${message}\n`);
};

function writeResult() {
  const text = JSON.stringify(result, null, 2);
  fs.writeFileSync(resultPath, text);
}

// Never hang: whatever happens, a result is written before the deadline.
const watchdog = setTimeout(() => {
  result.error = result.error || `timed out after ${input.timeoutMs} ms in phase ${phase}`;
  writeResult();
  process.exit(3);
}, input.timeoutMs);

function isGatewayUrl(url) {
  return url.startsWith(input.gatewayUrl);
}

function recordTraffic(context) {
  const records = new Map();
  context.on('request', request => {
    if (!isGatewayUrl(request.url())) return;
    const headers = request.headers();
    const record = {
      phase,
      method: request.method(),
      url: request.url(),
      accept: headers.accept ?? null,
      resourceType: request.resourceType(),
      status: null,
      contentType: null,
      failure: null,
    };
    records.set(request, record);
    result.requests.push(record);
  });
  context.on('response', response => {
    const record = records.get(response.request());
    if (!record) return;
    record.status = response.status();
    record.contentType = response.headers()['content-type'] ?? null;
  });
  context.on('requestfailed', request => {
    const record = records.get(request);
    if (record) record.failure = request.failure()?.errorText ?? 'failed';
  });
}

function watchPage(page) {
  page.on('console', message => {
    if (message.type() === 'error' || message.type() === 'warning') {
      result.console.push({ phase, type: message.type(), text: message.text() });
    }
  });
  page.on('pageerror', error => result.pageErrors.push({ phase, text: String(error) }));
}

// OHIF shows a first-use tour (per page: study list, viewer); "Skip all" closes it.
async function skipTour(page, waitMs) {
  const skip = page.getByRole('button', { name: /skip all/i });
  try {
    await skip.first().waitFor({ state: 'visible', timeout: waitMs });
    await skip.first().click();
    log('closed the first-use tour');
  } catch {
    // no tour shown
  }
}

async function screenshot(page, name) {
  const file = path.join(input.artifactDir, name);
  await page.screenshot({ path: file });
  result.screenshots.push(file);
}

// Pixel statistics of the largest visible cornerstone canvas (a 2D canvas the rendering engine
// copies each frame into), and a cheap hash to tell two renderings apart.
async function canvasStats(page) {
  return page.evaluate(() => {
    const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas')].filter(
      c => c.width > 0 && c.height > 0 && c.getBoundingClientRect().width > 0
    );
    if (canvases.length === 0) return null;
    canvases.sort((a, b) => b.width * b.height - a.width * a.height);
    const canvas = canvases[0];
    const context = canvas.getContext('2d', { willReadFrequently: true });
    if (!context) return { error: 'no 2d context', canvases: canvases.length };
    const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
    let nonBlack = 0;
    let hash = 2166136261;
    const levels = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const luminance = (data[i] + data[i + 1] + data[i + 2]) / 3;
      if (luminance > 8) nonBlack += 1;
      levels.add(Math.round(luminance));
      hash = Math.imul(hash ^ (data[i] ^ (data[i + 1] << 8) ^ (data[i + 2] << 16)), 16777619);
    }
    const box = canvas.getBoundingClientRect();
    // OHIF exposes cornerstone3D as window.cornerstone: which slice does this viewport show?
    let imageId = null;
    let imageIndex = null;
    try {
      const viewports = window.cornerstone.getEnabledElements().map(e => e.viewport);
      const viewport = viewports.find(v => v.canvas === canvas) ?? viewports[0];
      imageId = viewport?.getCurrentImageId?.() ?? null;
      imageIndex = viewport?.getCurrentImageIdIndex?.() ?? null;
    } catch {
      // not a stack viewport, or cornerstone not exposed
    }
    return {
      imageId,
      imageIndex,
      canvases: canvases.length,
      width: canvas.width,
      height: canvas.height,
      pixels: data.length / 4,
      nonBlack,
      distinctLevels: levels.size,
      hash: (hash >>> 0).toString(16),
      box: { x: box.x, y: box.y, width: box.width, height: box.height },
    };
  });
}

async function waitForImage(page, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let stats = null;
  while (Date.now() < deadline) {
    stats = await canvasStats(page);
    if (stats && stats.nonBlack > 200 && stats.distinctLevels > 4) return stats;
    await page.waitForTimeout(250);
  }
  return stats;
}

// Frames requests of one study so far (any status).
const framesOf = uid =>
  result.requests.filter(r => r.url.includes(`/studies/${uid}/`) && /\/frames\/\d/.test(r.url));
const framesCount = uid => framesOf(uid).length;

// The distinct instances of one study whose frames were requested so far (any status).
function framedInstances(uid) {
  const uids = new Set();
  for (const r of framesOf(uid)) {
    const match = /\/instances\/([^/]+)\/frames\//.exec(r.url);
    if (match) uids.add(match[1]);
  }
  return uids.size;
}

// Open one study in the viewer, wait for a drawn image, then scroll `scrollSteps` slices with
// the mouse wheel over the viewport (and a few arrow keys) and observe again.
async function openStudy(page, study) {
  const outcome = { firstImage: null, scrolledImage: null, framesBefore: 0, framesAfter: 0,
    instancesBefore: 0, instancesAfter: 0, textBefore: '', textAfter: '' };
  phase = `viewer:${study.name}`;
  const viewer = `${input.viewerUrl}/viewer?StudyInstanceUIDs=${study.uid}`;
  log(`open the study ${viewer}`);
  await page.goto(viewer, { waitUntil: 'domcontentloaded' });
  await skipTour(page, 6000);
  outcome.firstImage = await waitForImage(page, 40000);
  log(`${study.name}: first image ${JSON.stringify(outcome.firstImage)}`);
  // Let the initial loading and prefetching settle before scrolling.
  await page.waitForLoadState('networkidle', { timeout: 15000 }).catch(() => {});
  await page.waitForTimeout(500);
  await dismissBanners(page);
  outcome.firstImage = (await canvasStats(page)) ?? outcome.firstImage;
  outcome.textBefore = await page.evaluate(() => document.body.innerText);
  await screenshot(page, `ohif-${study.name}-first.png`);
  outcome.framesBefore = framesCount(study.uid);
  outcome.instancesBefore = framedInstances(study.uid);
  if (!study.scrollSteps || !outcome.firstImage || !outcome.firstImage.box) return outcome;

  phase = `scroll:${study.name}`;
  const { x, y, width, height } = outcome.firstImage.box;
  await page.mouse.move(x + width / 2, y + height / 2);
  for (let i = 0; i < study.scrollSteps; i += 1) {
    await page.mouse.wheel(0, 120);
    await page.waitForTimeout(60);
  }
  for (let i = 0; i < 3; i += 1) {
    await page.keyboard.press('ArrowDown');
    await page.waitForTimeout(60);
  }
  await page.waitForLoadState('networkidle', { timeout: 15000 }).catch(() => {});
  await page.waitForTimeout(500);
  outcome.scrolledImage = await canvasStats(page);
  outcome.textAfter = await page.evaluate(() => document.body.innerText);
  await screenshot(page, `ohif-${study.name}-scrolled.png`);
  outcome.framesAfter = framesCount(study.uid);
  outcome.instancesAfter = framedInstances(study.uid);
  log(`${study.name}: scrolled ${JSON.stringify(outcome.scrolledImage)}`);
  return outcome;
}

// OHIF's "investigational use" banner covers the bottom of the viewport in screenshots.
async function dismissBanners(page) {
  const confirm = page.getByRole('button', { name: /confirm and hide/i });
  if (await confirm.count().catch(() => 0)) {
    await confirm.first().click({ timeout: 2000 }).catch(() => {});
  }
}

async function main() {
  fs.mkdirSync(input.artifactDir, { recursive: true });
  const context = await chromium.launchPersistentContext(input.userDataDir, {
    executablePath: input.chromium,
    headless: true,
    args: CHROMIUM_FLAGS,
    serviceWorkers: 'block',
    viewport: { width: 1400, height: 900 },
  });
  context.setDefaultTimeout(20000);
  recordTraffic(context);
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    watchPage(page);

    phase = 'studylist';
    log(`open the study list ${input.viewerUrl}/`);
    await page.goto(`${input.viewerUrl}/`, { waitUntil: 'domcontentloaded' });
    await skipTour(page, 4000);
    await page.waitForFunction(
      texts => texts.every(t => document.body.innerText.includes(t)),
      input.studyTexts,
      { timeout: 30000 }
    ).catch(error => log(`study list incomplete: ${error.message.split('\n')[0]}`));
    await skipTour(page, 500);
    await dismissBanners(page);
    result.studyListText = await page.evaluate(() => document.body.innerText);
    await screenshot(page, 'ohif-study-list.png');

    for (const study of input.studies) {
      result.studies[study.name] = await openStudy(page, study);
    }
    phase = 'done';
    result.ok = true;
  } catch (error) {
    result.error = `${phase}: ${error.stack || error}`;
    for (const page of context.pages()) {
      await screenshot(page, `ohif-failure-${phase}.png`).catch(() => {});
    }
  } finally {
    await context.close().catch(() => {});
  }
}

main()
  .catch(error => {
    result.error = String(error.stack || error);
  })
  .finally(() => {
    clearTimeout(watchdog);
    writeResult();
    process.stdout.write(`${JSON.stringify({ ok: result.ok, error: result.error })}\n`);
  });
