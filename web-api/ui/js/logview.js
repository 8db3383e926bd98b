// The log viewer: a virtualised list that keeps only the rows in view in the DOM and only a bounded window
// of lines in memory, so a log of millions of lines scrolls as freely as a short one. Lines are fetched by
// sequence number (they are numbered from 1 without gaps), new ones arrive over the follow stream, and the
// view sticks to the end until the user scrolls up.

import { follow, get } from "./api.js";
import { clear, count, ENDED, h, notify } from "./dom.js";

const ROW = 18; // px; must match .line in style.css
const PAGE = 500; // lines per fetch
const KEEP_PAGES = 60; // at most this many pages cached (30,000 lines)
// Browsers cap an element's height (Chromium near 33.5M px, Firefox near 17.9M); beyond this the scrollbar
// maps proportionally onto the lines instead of one row per 18 px.
const MAX_PX = 8_000_000;
const SHOWN_CHARS = 2_000;

export class LogView {
  constructor(taskId) {
    this.id = taskId;
    this.total = 0;
    this.pages = new Map();
    this.inflight = new Set();
    this.fetchedAt = new Map();
    this.stick = true;
    this.lastTop = 0;
    this.selected = 0;
    this.needle = "";
    this.unseen = 0;
    this.stopper = new AbortController();
    this.frame = 0;

    this.spacer = h("div", { class: "log-spacer" });
    this.rows = h("div", { class: "log-rows" });
    this.viewport = h(
      "div",
      {
        class: "log-viewport",
        role: "log",
        "aria-live": "off",
        "aria-label": "Log lines",
        tabindex: 0,
        onscroll: () => this.scrolled(),
        onclick: (e) => {
          const line = e.target.closest(".line");
          if (line) this.select(Number(line.dataset.seq));
        },
      },
      this.spacer,
      this.rows,
    );
    this.followBox = h("input", {
      type: "checkbox",
      id: "log-follow",
      checked: true,
      onchange: () => {
        this.stick = this.followBox.checked;
        if (this.stick) this.toEnd();
      },
    });
    this.state = h("span", { class: "log-state", role: "status" });
    this.detail = h("pre", { class: "line-detail", hidden: true, tabindex: 0, "aria-label": "Selected line" });
    this.results = h("div", { class: "search-results", "aria-label": "Search results" });
    this.searchInput = h("input", { type: "search", id: "log-search", name: "q", autocomplete: "off" });
    this.element = h(
      "section",
      { class: "log", "aria-label": "Log" },
      h(
        "div",
        { class: "log-tools" },
        h(
          "form",
          {
            role: "search",
            onsubmit: (e) => {
              e.preventDefault();
              this.search(this.searchInput.value);
            },
          },
          h("label", { for: "log-search" }, "Search log "),
          this.searchInput,
          h("button", { type: "submit" }, "Find"),
        ),
        h("label", { class: "check", for: "log-follow" }, this.followBox, " Follow new lines"),
        h("button", { type: "button", class: "secondary", onclick: () => this.jumpTo(1) }, "Top"),
        h("button", { type: "button", class: "secondary", onclick: () => this.followFromEnd() }, "End"),
        this.state,
      ),
      this.results,
      this.viewport,
      this.detail,
    );
    window.addEventListener("resize", this.onResize = () => this.paint());
  }

  /** Starts following the log of `task` from the lines stored now; older lines load as they come into view. */
  start(task) {
    this.setTotal(task.log_lines);
    this.ended = ENDED.includes(task.status);
    if (this.ended) this.finish();
    requestAnimationFrame(() => (this.stick ? this.toEnd() : this.paint()));
    follow(`/tasks/${this.id}/logs?follow=true&after=${task.log_lines}`, {
      signal: this.stopper.signal,
      finalEvents: ["end", "error"],
      onState: (state, detail) => {
        this.link = state === "open" ? "following" : state === "closed" ? (this.ended ? "" : detail || "") : `reconnecting (${detail})`;
        this.status();
      },
      onEvent: ({ event, data }) => {
        if (event === "log") {
          const line = JSON.parse(data);
          this.put(line);
          if (!this.stick) this.unseen++;
          this.schedule();
        } else if (event === "end") {
          // The last lines came before this: show them, then stop offering to follow what will not come.
          if (this.stick) this.toEnd();
          this.ended = true;
          this.finish();
        } else if (event === "error") {
          notify(`Log stream: ${data}`, "error");
        }
      },
    });
  }

  stop() {
    this.stopper.abort();
    window.removeEventListener("resize", this.onResize);
    cancelAnimationFrame(this.frame);
  }

  setTotal(n) {
    if (n > this.total) {
      this.total = n;
      this.schedule();
    }
  }

  /** The task has ended: nothing more will arrive, so following is off and cannot be turned on. */
  finish() {
    this.setStick(false);
    this.followBox.disabled = true;
  }

  setStick(on) {
    this.stick = on;
    this.followBox.checked = on;
    if (on) this.unseen = 0;
    this.status();
  }

  put(line) {
    const k = Math.floor((line.seq - 1) / PAGE);
    let page = this.pages.get(k);
    if (!page) {
      page = new Array(PAGE);
      this.pages.set(k, page);
      this.evict();
    }
    page[(line.seq - 1) % PAGE] = line;
    if (line.seq > this.total) this.total = line.seq;
  }

  line(seq) {
    const k = Math.floor((seq - 1) / PAGE);
    const page = this.pages.get(k);
    const line = page && page[(seq - 1) % PAGE];
    if (!line) this.fetch(k);
    return line;
  }

  fetch(k) {
    if (this.inflight.has(k)) return;
    // A page fetched a moment ago whose tail is still missing is waiting for the stream, not for a re-fetch.
    if (Date.now() - (this.fetchedAt.get(k) || 0) < 1000) return;
    this.inflight.add(k);
    get(`/tasks/${this.id}/logs`, { after: k * PAGE, limit: PAGE }, { signal: this.stopper.signal })
      .then((lines) => lines.forEach((line) => this.put(line)))
      .catch((error) => {
        if (!this.stopper.signal.aborted) this.state.textContent = `loading lines failed: ${error.message}`;
      })
      .finally(() => {
        this.inflight.delete(k);
        this.fetchedAt.set(k, Date.now());
        this.schedule();
      });
  }

  /** Drops the pages farthest from the view once more than KEEP_PAGES are held. */
  evict() {
    if (this.pages.size <= KEEP_PAGES) return;
    const here = Math.floor((this.first || 0) / PAGE);
    const far = [...this.pages.keys()].sort((a, b) => Math.abs(b - here) - Math.abs(a - here));
    for (const k of far.slice(0, this.pages.size - KEEP_PAGES)) this.pages.delete(k);
  }

  schedule() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        if (this.stick) this.toEnd();
        else this.paint();
      });
    }
  }

  visibleRows() {
    return Math.max(1, Math.ceil(this.viewport.clientHeight / ROW));
  }

  scaled() {
    return this.total * ROW > MAX_PX;
  }

  /** The scrollTop that shows row `index` (0-based) at the top. */
  topFor(index) {
    if (!this.scaled()) return index * ROW;
    const span = Math.max(1, this.total - this.visibleRows());
    return (Math.min(index, span) / span) * (MAX_PX - this.viewport.clientHeight);
  }

  paint() {
    const height = Math.min(this.total * ROW, MAX_PX);
    this.spacer.style.height = `${height}px`;
    const visible = this.visibleRows();
    const top = this.viewport.scrollTop;
    let first;
    let offset;
    if (!this.scaled()) {
      first = Math.floor(top / ROW);
      offset = first * ROW;
    } else {
      const span = Math.max(1, this.total - visible);
      const max = Math.max(1, MAX_PX - this.viewport.clientHeight);
      first = Math.round((Math.min(top, max) / max) * span);
      // Rows hanging below the spacer would grow the scroll height, and the view would creep down.
      offset = Math.min(top, MAX_PX - visible * ROW);
    }
    first = Math.max(0, Math.min(first, this.total - 1));
    this.first = first;
    this.rows.style.transform = `translateY(${offset}px)`;
    const rows = [];
    const last = Math.min(this.total, first + visible + 1);
    for (let seq = first + 1; seq <= last; seq++) rows.push(this.row(seq, this.line(seq)));
    this.rows.replaceChildren(...rows);
    this.showDetail();
    this.status();
  }

  row(seq, line) {
    const classes = ["line"];
    if (line) classes.push(line.stream);
    if (seq === this.selected) classes.push("selected");
    const el = h("div", { class: classes.join(" "), dataset: { seq } }, h("span", { class: "n" }, seq));
    const text = h("span", { class: "t" });
    if (!line) {
      text.textContent = "…";
      text.classList.add("loading");
    } else {
      const shown = line.text.length > SHOWN_CHARS ? `${line.text.slice(0, SHOWN_CHARS)} … (${count(line.text.length)} characters; click to see all)` : line.text;
      mark(text, shown, this.needle);
    }
    el.append(text);
    return el;
  }

  scrolled() {
    const top = this.viewport.scrollTop;
    const atEnd = top + this.viewport.clientHeight >= this.viewport.scrollHeight - ROW;
    // Only the user moves the view up: following pauses then, and resumes once they are back at the end.
    if (top < this.lastTop - 1 && this.stick) this.setStick(false);
    else if (atEnd && !this.stick && !this.ended) this.setStick(true);
    this.lastTop = top;
    if (!this.frame) this.frame = requestAnimationFrame(() => ((this.frame = 0), this.paint()));
  }

  /** The End button: back to the last line, following again while the log can still grow. */
  followFromEnd() {
    if (!this.ended) this.setStick(true);
    this.toEnd();
  }

  toEnd() {
    this.paint();
    this.viewport.scrollTop = this.viewport.scrollHeight;
    this.lastTop = this.viewport.scrollTop;
    this.unseen = 0;
    this.paint();
  }

  /** Shows line `seq` in the middle of the view, selected. */
  jumpTo(seq) {
    this.setStick(false);
    const index = Math.max(0, seq - 1 - Math.floor(this.visibleRows() / 2));
    this.viewport.scrollTop = this.topFor(index);
    this.lastTop = this.viewport.scrollTop;
    if (seq > 1) this.select(seq);
    this.paint();
  }

  select(seq) {
    this.selected = seq;
    this.detailOf = 0;
    this.detail.hidden = true;
    this.paint();
  }

  /** The selected line in full, once it is loaded. */
  showDetail() {
    if (!this.selected || this.detailOf === this.selected) return;
    const line = this.line(this.selected);
    if (!line) return;
    this.detailOf = this.selected;
    this.detail.hidden = false;
    clear(this.detail, `line ${count(line.seq)} · ${line.stream} · ${new Date(line.at).toLocaleString()}\n${line.text}`);
  }

  status() {
    const parts = [`${count(this.total)} lines`];
    if (this.link) parts.push(this.link);
    if (this.ended) parts.push("task ended");
    if (!this.stick && this.unseen) parts.push(`${count(this.unseen)} new below`);
    this.state.textContent = parts.join(" · ");
  }

  /** Searches the whole stored log on the server, in bounded steps, listing matches as they are found. */
  search(text) {
    this.needle = text.trim().toLowerCase();
    this.paint();
    if (!this.needle) {
      this.searching?.abort();
      return clear(this.results);
    }
    const found = {
      text: text.trim(),
      count: 0,
      list: h("ol", { class: "matches" }),
      progress: h("p", { role: "status" }, "searching…"),
      more: h("button", { type: "button", class: "secondary", hidden: true }, "Find more"),
    };
    clear(this.results, found.progress, found.list, found.more);
    return this.searchFrom(found, 0);
  }

  /** Scans on from line `after` until 100 more matches or the end of the log. */
  async searchFrom(found, after) {
    this.searching?.abort();
    const stop = (this.searching = new AbortController());
    found.more.hidden = true;
    const wanted = found.count + 100;
    for (;;) {
      let step;
      try {
        step = await get(`/tasks/${this.id}/logs/search`, { q: found.text, after, limit: wanted - found.count }, { signal: stop.signal });
      } catch (error) {
        if (!stop.signal.aborted) found.progress.textContent = `search failed: ${error.message}`;
        return;
      }
      if (stop.signal.aborted) return;
      for (const line of step.lines) {
        found.count++;
        const shown = line.text.length > 200 ? `${line.text.slice(0, 200)}…` : line.text;
        found.list.append(
          h("li", {}, h("button", { type: "button", class: "link", onclick: () => this.jumpTo(line.seq) }, `line ${count(line.seq)}`), " ", shown),
        );
      }
      after = step.scanned_to;
      const noun = found.count === 1 ? "match" : "matches";
      found.progress.textContent = `${count(found.count)} ${noun} · searched ${count(after)} of ${count(this.total)} lines${step.done ? "" : "…"}`;
      if (step.done) return;
      if (found.count >= wanted) {
        found.more.hidden = false;
        found.more.onclick = () => this.searchFrom(found, after);
        return;
      }
    }
  }
}

/** Fills `el` with `text`, the occurrences of `needle` (lowercase) wrapped in <mark>. */
function mark(el, text, needle) {
  if (!needle) {
    el.textContent = text;
    return;
  }
  const lower = text.toLowerCase();
  let at = 0;
  for (;;) {
    const found = lower.indexOf(needle, at);
    if (found < 0) break;
    el.append(text.slice(at, found), h("mark", {}, text.slice(found, found + needle.length)));
    at = found + needle.length;
  }
  el.append(text.slice(at));
}
