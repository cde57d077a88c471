// One timed OHIF load for benchmarks/ohif_load.py: a fresh headless Chromium (playwright-core,
// Debian's /usr/bin/chromium) with a fresh profile opens /viewer?StudyInstanceUIDs=<uid> and an
// in-page probe records, on the page's own clock (ms since navigation start):
//   - firstImage: the first poll at which the largest cornerstone canvas is not blank;
//   - allLoaded: the first poll at which every image of the displayed stack is in cornerstone's
//     cache (fetched and decoded);
//   - resource timings of every DICOMweb request (start, responseEnd, status).
// The Python side starts the servers and computes the figures; this script only observes and
// writes one JSON result (argv[3]).
//
// Usage: node ohif_load.mjs <input.json> <result.json>
// input: { nodeModules, chromium, userDataDir, viewerUrl, studyUid, dicomwebRoot,
//          expectedImages, disableWebSecurity, timeoutMs, stallMs, screenshot (path or null),
//          network (null, or { latencyMs, downloadBps, uploadBps }) }
//
// With `network`, Chromium's own network emulation (CDP Network.emulateNetworkConditions on the
// page's target: added latency per request, shared download and upload throughput in bytes/s)
// is applied before the navigation. It throttles what the page's network stack fetches; OHIF
// fetches the series metadata and every frame with XHR from the main thread (cornerstone's
// dicom-image-loader; its web workers only decode), which the driver checks: `wire` counts, from
// CDP's Network events of the page's target, every DICOMweb response with its bytes on the wire
// and Content-Encoding, and the Python side compares the frames seen there with the frames of the
// page's resource timing and with the responses the whole browser context saw.

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
  '--disk-cache-size=1',
];

const result = {
  ok: false,
  error: null,
  probe: null,
  statuses: {},
  failures: [],
  consoleErrors: [],
  pageErrors: [],
  wallMs: null,
  network: null,
  wire: [],
  contextResponses: { frames: 0, metadata: 0 },
  workers: [],
};

function writeResult() {
  fs.writeFileSync(resultPath, JSON.stringify(result));
}

const watchdog = setTimeout(() => {
  result.error = result.error || `timed out after ${input.timeoutMs} ms`;
  writeResult();
  process.exit(3);
}, input.timeoutMs);

// Runs in the page before any of OHIF's scripts: resource timings of DICOMweb requests, and a
// poll every ~15 ms of the canvas (until an image shows) and of cornerstone's cache (until the
// whole stack is loaded).
function installProbe({ dicomwebRoot, expectedImages }) {
  const probe = {
    firstImage: null,
    firstImageStats: null,
    allLoaded: null,
    stackSize: null,
    loadedCounts: [],
    resources: [],
    polls: 0,
    maxCacheSize: null,
  };
  window.__ohifLoadProbe = probe;
  performance.setResourceTimingBufferSize(100000);
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) {
      if (!e.name.startsWith(dicomwebRoot)) continue;
      probe.resources.push({
        url: e.name,
        start: e.startTime,
        responseStart: e.responseStart,
        end: e.responseEnd,
        status: e.responseStatus ?? null,
        bytes: e.encodedBodySize ?? null,
      });
    }
  }).observe({ type: 'resource', buffered: true });

  const small = document.createElement('canvas');
  small.width = 96;
  small.height = 96;
  const smallContext = small.getContext('2d', { willReadFrequently: true });

  function canvasShowsImage() {
    const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas')].filter(
      c => c.width > 0 && c.height > 0
    );
    if (canvases.length === 0) return null;
    canvases.sort((a, b) => b.width * b.height - a.width * a.height);
    smallContext.clearRect(0, 0, 96, 96);
    smallContext.drawImage(canvases[0], 0, 0, 96, 96);
    const { data } = smallContext.getImageData(0, 0, 96, 96);
    let nonBlack = 0;
    const levels = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const luminance = (data[i] + data[i + 1] + data[i + 2]) / 3;
      if (luminance > 8) nonBlack += 1;
      levels.add(Math.round(luminance));
    }
    return { nonBlack, levels: levels.size, pixels: data.length / 4 };
  }

  function loadedInStack() {
    const cs = window.cornerstone;
    if (!cs?.getEnabledElements) return null;
    const viewport = cs.getEnabledElements()[0]?.viewport;
    const ids = viewport?.getImageIds?.();
    if (!ids?.length) return null;
    const cache = cs.cache;
    if (probe.maxCacheSize === null) probe.maxCacheSize = cache.getMaxCacheSize?.() ?? null;
    let loaded = 0;
    for (const id of ids) {
      const done = cache.isLoaded ? cache.isLoaded(id) : !!cache.getImage?.(id);
      if (done) loaded += 1;
    }
    return { loaded, total: ids.length };
  }

  let lastCount = -1;
  function poll() {
    probe.polls += 1;
    const now = performance.now();
    try {
      if (probe.firstImage === null) {
        const stats = canvasShowsImage();
        if (stats && stats.nonBlack > stats.pixels * 0.02 && stats.levels > 4) {
          probe.firstImage = now;
          probe.firstImageStats = stats;
        }
      }
      if (probe.allLoaded === null) {
        const counts = loadedInStack();
        if (counts) {
          probe.stackSize = counts.total;
          if (counts.loaded !== lastCount) {
            probe.loadedCounts.push([Math.round(now), counts.loaded]);
            lastCount = counts.loaded;
          }
          if (counts.loaded >= counts.total && counts.total >= expectedImages) {
            probe.allLoaded = now;
          }
        }
      }
    } catch (error) {
      probe.error = String(error);
    }
    if (probe.firstImage === null || probe.allLoaded === null) setTimeout(poll, 15);
  }
  setTimeout(poll, 15);
}

async function main() {
  const args = [...CHROMIUM_FLAGS];
  if (input.disableWebSecurity) args.push('--disable-web-security');
  const context = await chromium.launchPersistentContext(input.userDataDir, {
    executablePath: input.chromium,
    headless: true,
    args,
    serviceWorkers: 'block',
    viewport: { width: 1400, height: 900 },
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', message => {
      if (message.type() === 'error') result.consoleErrors.push(message.text().slice(0, 300));
    });
    page.on('pageerror', error => result.pageErrors.push(String(error).slice(0, 300)));
    page.on('worker', worker => result.workers.push(worker.url().slice(0, 200)));
    context.on('response', response => {
      const url = response.url();
      if (!url.startsWith(input.dicomwebRoot)) return;
      if (url.includes('/frames/')) result.contextResponses.frames += 1;
      else if (url.split('?')[0].endsWith('/metadata')) result.contextResponses.metadata += 1;
      const key = `${response.request().method()} ${response.status()}`;
      result.statuses[key] = (result.statuses[key] ?? 0) + 1;
    });
    context.on('requestfailed', request => {
      if (request.url().startsWith(input.dicomwebRoot)) {
        result.failures.push(`${request.url()}: ${request.failure()?.errorText}`);
      }
    });
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    // Bytes on the wire (headers + body as received, after any Content-Encoding) per response.
    const pending = new Map();
    cdp.on('Network.responseReceived', event => {
      if (!event.response.url.startsWith(input.dicomwebRoot)) return;
      const headers = Object.fromEntries(
        Object.entries(event.response.headers).map(([k, v]) => [k.toLowerCase(), v]));
      pending.set(event.requestId, {
        url: event.response.url,
        status: event.response.status,
        encoding: headers['content-encoding'] ?? null,
        type: headers['content-type'] ?? null,
      });
    });
    cdp.on('Network.loadingFinished', event => {
      const entry = pending.get(event.requestId);
      if (!entry) return;
      pending.delete(event.requestId);
      result.wire.push({ ...entry, wireBytes: event.encodedDataLength });
    });
    if (input.network) {
      result.network = {
        offline: false,
        latency: input.network.latencyMs,
        downloadThroughput: input.network.downloadBps,
        uploadThroughput: input.network.uploadBps,
      };
      await cdp.send('Network.emulateNetworkConditions', result.network);
    }
    await page.addInitScript(installProbe, {
      dicomwebRoot: input.dicomwebRoot,
      expectedImages: input.expectedImages,
    });
    const viewer = `${input.viewerUrl}/viewer?StudyInstanceUIDs=${input.studyUid}`;
    const t0 = Date.now();
    await page.goto(viewer, { waitUntil: 'commit' });
    const deadline = t0 + input.timeoutMs - 5000;
    let probe = null;
    while (Date.now() < deadline) {
      probe = await page.evaluate(() => {
        const p = window.__ohifLoadProbe;
        if (!p) return null;
        const last = p.loadedCounts[p.loadedCounts.length - 1] ?? null;
        return { firstImage: p.firstImage, allLoaded: p.allLoaded, now: performance.now(), last };
      });
      if (probe && probe.firstImage !== null && probe.allLoaded !== null) break;
      // The stack stopped filling (no new image in cornerstone's cache for a long while).
      if (probe?.last && probe.firstImage !== null && probe.now - probe.last[0] > input.stallMs) {
        result.error = `stalled: ${probe.last[1]} images loaded, none since ${probe.last[0]} ms`;
        break;
      }
      await page.waitForTimeout(200);
    }
    result.wallMs = Date.now() - t0;
    result.probe = await page.evaluate(() => window.__ohifLoadProbe ?? null);
    if (input.screenshot) await page.screenshot({ path: input.screenshot }).catch(() => {});
    result.ok = !!(result.probe && result.probe.firstImage !== null &&
      result.probe.allLoaded !== null);
    if (!result.ok && !result.error) {
      result.error = `incomplete: ${JSON.stringify(probe)}`;
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
