// Drives headless Chromium over a report opened from disk and prints what it saw as one JSON object.
// usage: node check_report.mjs REPORT_HTML SCREENSHOT_PNG   (CHROMIUM names the browser binary)
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const [reportPath, shotPath] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { errors: [], network: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") result.errors.push(m.text()); });
  page.on("pageerror", (e) => result.errors.push(String(e)));
  page.on("requestfailed", (r) => result.errors.push("request failed: " + r.url()));
  page.on("request", (r) => { if (!/^(file|data|blob):/.test(r.url())) result.network.push(r.url()); });

  const t0 = Date.now();
  await page.goto(pathToFileURL(reportPath).href);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 30000 });
  result.load_ms = Date.now() - t0;
  // At 1400 px the summary table must stay inside the page: wide rows scroll inside the table's own box.
  await page.setViewportSize({ width: 1400, height: 900 });
  result.at_1400 = await page.evaluate(() => {
    const table = document.querySelector("#summary-table"), box = table.parentElement;
    return { viewport: window.innerWidth, page_width: document.documentElement.scrollWidth,
             box_right: box.getBoundingClientRect().right, box_scrolls: getComputedStyle(box).overflowX,
             table_width: table.scrollWidth,
             headers: [...table.tHead.rows[0].cells].map((th) => th.textContent) };
  });
  await page.setViewportSize({ width: 1280, height: 900 });
  const firstColumn = (key) => page.$$eval(
    "#summary-table tbody tr", (trs, k) => {
      const idx = [...document.querySelectorAll("#summary-table thead th")].findIndex((th) => th.dataset.key === k);
      return trs.map((tr) => tr.cells[idx].textContent);
    }, key);
  result.rows_on_page = await page.$$eval("#summary-table tbody tr", (trs) => trs.length);
  result.row_heights = await page.$$eval("#summary-table tbody tr", (trs) => trs.map((tr) => tr.offsetHeight));
  result.warning_titles = await page.$$eval("#summary-table td.warn", (tds) => tds.map((td) => td.title));
  result.shown = await page.textContent("#shown");
  result.failures = await page.$$eval("#failures tbody tr", (trs) => trs.map((tr) => tr.cells[0].textContent));
  result.skipped = await page.$$eval("#skipped tbody tr", (trs) => trs.length);

  const sortKey = "conservation_error";
  let t = Date.now();
  await page.click(`th[data-key="${sortKey}"]`);
  result.sorted_ascending = await firstColumn(sortKey);
  result.sort_ms = Date.now() - t;
  await page.click(`th[data-key="${sortKey}"]`);
  result.sorted_descending = await firstColumn(sortKey);
  result.aria_sort = await page.getAttribute(`th[data-key="${sortKey}"]`, "aria-sort");

  const ids = await firstColumn("scan_id");
  t = Date.now();
  await page.fill("#filter", ids[0]);
  await page.waitForFunction((n) => document.querySelector("#shown").textContent.startsWith(n + " "), 1,
                             { timeout: 10000 }).catch(() => {});
  result.filter_ms = Date.now() - t;
  result.filtered = await firstColumn("scan_id");
  await page.fill("#filter", "");
  await page.waitForFunction((s) => document.querySelector("#shown").textContent === s, result.shown);

  await page.click('.pager[data-for="table"] [data-step="1"]').catch(() => {});
  result.second_page = await page.textContent('.pager[data-for="table"] .where');

  await page.locator("#gallery-grid img").first().scrollIntoViewIfNeeded();
  await page.waitForFunction(() => { const img = document.querySelector("#gallery-grid img");
                                     return img && img.complete && img.naturalWidth > 0; }, null, { timeout: 10000 });
  result.gallery_items = await page.$$eval("#gallery-grid a", (as) => as.length);
  result.gallery_lazy = await page.$$eval("#gallery-grid img", (imgs) => imgs.every((i) => i.loading === "lazy"));

  await page.click(`#summary-table tbody tr a`);
  await page.waitForSelector("body[data-viewer]", { timeout: 30000 });
  result.scan_page = page.url();
  result.viewer = await page.getAttribute("body", "data-viewer");
  result.viewer_status = await page.textContent("#viewer-status");
  await page.click('[data-plane="axial"]');
  await page.fill("#slice", "400");
  await page.waitForTimeout(300);
  await page.locator("#viewer").screenshot({ path: shotPath });
  result.overlays_loaded = await page.$$eval("#overlays img", (imgs) => imgs.map((i) => i.complete && i.naturalWidth > 0));
} catch (e) {
  result.errors.push("driver: " + e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
