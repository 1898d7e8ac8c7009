// The Quiver status page: renders /api/status snapshots, live over Server-Sent Events
// (/api/status/events), polling /api/status every second where EventSource is missing.
// Every value from the cluster goes into the DOM through textContent or setAttribute, never
// as markup, so a collection or Searcher name cannot inject anything.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3b5bdb", "#f08c00", "#2b8a3e", "#c2255c", "#1098ad", "#7048e8",
    "#e8590c", "#5c940d", "#d6336c", "#495057", "#0b7285", "#9c36b5"];
  const STALE_AFTER_MS = 5000;

  let lastMessageAt = 0;
  let colours = new Map();

  function $(id) { return document.getElementById(id); }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attributes, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function chip(state, text) {
    return el("span", { class: "chip state-" + state }, text || state);
  }

  function number(value) { return Number(value || 0).toLocaleString("en-US"); }

  function percent(fraction) { return (fraction * 100).toFixed(1) + "%"; }

  function timeOf(rfc3339) {
    if (!rfc3339) return "–";
    const date = new Date(rfc3339);
    if (isNaN(date)) return rfc3339;
    return date.toLocaleTimeString("en-GB", { hour12: false }) + " (" + ago(date) + ")";
  }

  function ago(date) {
    const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function setLive(state, text) {
    $("live").setAttribute("data-live", state);
    $("live-text").textContent = text;
  }

  function colourOf(id) { return colours.get(id) || "#868e96"; }

  function render(snapshot) {
    colours = new Map(snapshot.searchers.map((searcher, index) => [searcher.id, PALETTE[index % PALETTE.length]]));
    renderHeader(snapshot);
    renderSearchers(snapshot);
    renderRebalance(snapshot.rebalance);
    renderRing(snapshot);
    renderCollections(snapshot);
    document.body.setAttribute("data-revision", snapshot.revision);
  }

  function renderHeader(snapshot) {
    const summary = snapshot.summary;
    $("revision").textContent = snapshot.revision;
    $("updated").textContent = new Date(snapshot.generated_at).toLocaleTimeString("en-GB", { hour12: false });
    const leader = snapshot.controller.leader;
    $("leader").textContent = leader ? leader.id : "none";
    $("sum-searchers").textContent = summary.searchers_live;
    $("sum-searchers-note").textContent = summary.searchers_offline
      ? summary.searchers_offline + " offline but still assigned" : "all assigned Searchers live";
    $("sum-collections").textContent = summary.collections;
    $("sum-shards").textContent = summary.shards + " shards";
    $("sum-replicas").textContent = summary.replicas;
    const states = $("sum-replica-states");
    states.replaceChildren();
    for (const [state, count] of Object.entries(summary.replicas_by_state)) {
      if (count > 0) states.append(chip(state, count + " " + state));
    }
    if (!states.childElementCount) states.textContent = "none";
    $("sum-vectors").textContent = number(summary.vectors);
    const notice = $("notice");
    notice.hidden = !snapshot.controller.error;
    notice.textContent = snapshot.controller.error ? "Controller records may be out of date: " + snapshot.controller.error : "";
  }

  function renderSearchers(snapshot) {
    const body = $("searchers").tBodies[0];
    const most = Math.max(1, ...snapshot.searchers.map((searcher) => searcher.vectors));
    body.replaceChildren(...snapshot.searchers.map((searcher) => {
      const fill = el("div", { class: "bar-fill" });
      fill.style.width = (100 * searcher.vectors / most).toFixed(1) + "%";
      fill.style.background = colourOf(searcher.id);
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = colourOf(searcher.id);
      return el("tr", { "data-searcher": searcher.id, "data-state": searcher.state },
        el("td", { class: "ident" }, swatch, searcher.id),
        el("td", { class: "mono address", title: searcher.address }, (searcher.address || "—").replace(/^https?:\/\//, "")),
        el("td", {}, chip(searcher.state)),
        el("td", { class: "num" }, searcher.replicas),
        el("td", { class: "num" }, searcher.primaries),
        el("td", {}, el("div", { class: "vectors" },
          el("span", { class: "value", "data-vectors": searcher.vectors }, number(searcher.vectors)),
          el("div", { class: "bar", "aria-hidden": "true" }, fill))));
    }));
    $("searchers-empty").hidden = snapshot.searchers.length > 0;
  }

  function renderRebalance(rebalance) {
    $("rebalance-empty").hidden = !!rebalance;
    $("rebalance-body").hidden = !rebalance;
    $("rebalance").setAttribute("data-started", rebalance ? rebalance.started_at : "");
    if (!rebalance) return;
    const finished = !!rebalance.finished_at;
    $("rebalance-status").replaceWith(Object.assign(chip(finished ? "FINISHED" : "IN_PROGRESS",
      finished ? "FINISHED" : "IN PROGRESS"), { id: "rebalance-status" }));
    $("rebalance-trigger").textContent = rebalance.trigger;
    $("rebalance-fraction").textContent = percent(rebalance.moved_fraction);
    $("rebalance-fraction").setAttribute("data-fraction", rebalance.moved_fraction);
    $("rebalance-bar").style.width = Math.min(100, rebalance.moved_fraction * 100).toFixed(1) + "%";
    $("rebalance-counts").textContent = "(" + rebalance.moved_replicas + " of " + rebalance.total_replicas + ")";
    $("rebalance-pending").textContent = rebalance.pending_shards;
    $("rebalance-started").textContent = timeOf(rebalance.started_at);
    $("rebalance-finished").textContent = finished ? timeOf(rebalance.finished_at) : "not yet";
    const shown = rebalance.moves.slice(0, 16);
    const moves = shown.map((move) => el("li", {},
      el("span", { class: "mono" }, move.collection + "/" + move.shard), " ",
      move.from || "(new copy)", el("span", { class: "arrow", "aria-label": "to" }, "→"), move.to));
    const more = rebalance.moves.length - shown.length + (rebalance.moves_omitted || 0);
    if (more > 0) moves.push(el("li", { class: "muted" }, "and " + more + " more"));
    if (!moves.length) moves.push(el("li", { class: "muted" }, "no replica had to move"));
    $("rebalance-moves").replaceChildren(...moves);
  }

  function point(fraction, radius) {
    const angle = fraction * 2 * Math.PI - Math.PI / 2;
    return [220 + radius * Math.cos(angle), 220 + radius * Math.sin(angle)];
  }

  function renderRing(snapshot) {
    const ring = $("ring");
    const desc = svg("desc", { id: "ring-desc" },
      "The consistent-hash ring: " + snapshot.ring.searchers.length + " Searchers with " +
      snapshot.ring.virtual_nodes + " virtual nodes each, and " + snapshot.summary.shards + " shards.");
    const children = [desc, svg("circle", { class: "ring-track", cx: 220, cy: 220, r: 180 })];
    for (const searcher of snapshot.ring.searchers) {
      const group = svg("g", { class: "ring-searcher", "data-searcher": searcher.id, stroke: colourOf(searcher.id), "stroke-width": 1.6 },
        svg("title", {}, searcher.id + ": " + searcher.positions.length + " virtual nodes"));
      for (const position of searcher.positions) {
        const [x1, y1] = point(position, 172);
        const [x2, y2] = point(position, 188);
        group.append(svg("line", { x1: x1.toFixed(1), y1: y1.toFixed(1), x2: x2.toFixed(1), y2: y2.toFixed(1) }));
      }
      children.push(group);
    }
    const shards = snapshot.collections.flatMap((collection) => collection.shards.map((shard) => [collection, shard]));
    const labelled = shards.length <= 48;
    const links = svg("g", { class: "ring-links" });
    const dots = svg("g", { class: "ring-shards" });
    // Shards close together on the ring are drawn on inner orbits so none hides another.
    const orbits = [];
    const orbitOf = (position) => {
      const gap = labelled ? 0.045 : 0.012;
      const near = (other) => Math.min(Math.abs(other - position), 1 - Math.abs(other - position)) < gap;
      let level = 0;
      while (level < 4 && (orbits[level] || []).some(near)) level += 1;
      (orbits[level] = orbits[level] || []).push(position);
      return level;
    };
    for (const [collection, shard] of shards) {
      const radius = 140 - 24 * orbitOf(shard.ring_position);
      const [sx, sy] = point(shard.ring_position, radius);
      for (const replica of shard.replicas) {
        if (replica.ring_position === null) continue;
        const [rx, ry] = point(replica.ring_position, 170);
        links.append(svg("line", {
          x1: sx.toFixed(1), y1: sy.toFixed(1), x2: rx.toFixed(1), y2: ry.toFixed(1),
          stroke: colourOf(replica.searcher), "stroke-opacity": 0.75,
          "stroke-width": replica.role === "PRIMARY" ? 2.2 : 1.1,
          "stroke-dasharray": replica.role === "LEARNER" || replica.role === "UNASSIGNED" ? "4 3" : null,
        }, svg("title", {}, collection.name + "/" + shard.shard + " → " + replica.searcher + " (" + replica.role.toLowerCase() + ", " + replica.state + ")")));
      }
      const group = svg("g", { class: "ring-shard", "data-collection": collection.name, "data-shard": shard.shard },
        svg("title", {}, collection.name + " shard " + shard.shard + " at " + shard.ring_position.toFixed(4) + "; primary " + (shard.primary || "none")),
        svg("circle", { cx: sx.toFixed(1), cy: sy.toFixed(1), r: labelled ? 8 : 4, fill: colourOf(shard.primary) }));
      if (labelled) group.append(svg("text", { x: sx.toFixed(1), y: sy.toFixed(1) }, shard.shard));
      dots.append(group);
    }
    children.push(links, dots,
      svg("text", { class: "ring-center-big", x: 220, y: 214 }, shards.length),
      svg("text", { class: "ring-center", x: 220, y: 234 }, shards.length === 1 ? "shard" : "shards"));
    ring.replaceChildren(...children);
    $("ring-legend").replaceChildren(...snapshot.searchers.map((searcher) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = colourOf(searcher.id);
      return el("li", { "data-searcher": searcher.id }, swatch, searcher.id + " · " + percent(searcher.ring_share) + " of ring");
    }));
  }

  function renderCollections(snapshot) {
    $("collections-empty").hidden = snapshot.collections.length > 0;
    $("collections").replaceChildren(...snapshot.collections.map((collection) => {
      const rows = collection.shards.map((shard) => el("tr", { "data-shard": shard.shard },
        el("td", { class: "num" }, shard.shard),
        el("td", { class: "num mono" }, shard.ring_position.toFixed(4)),
        el("td", { class: "num" }, shard.epoch),
        el("td", {}, el("div", { class: "replicas" }, ...(shard.replicas.length ? shard.replicas.map((replica) => {
          const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
          swatch.style.background = colourOf(replica.searcher);
          return el("span", {
            class: "replica", "data-searcher": replica.searcher, "data-state": replica.state,
            "data-role": replica.role, "data-points": replica.points,
          },
          swatch, el("span", { class: "ident" }, replica.searcher),
          el("span", { class: "role role-" + replica.role }, replica.role),
          chip(replica.state),
          el("span", { class: "detail" }, number(replica.points) + " pts · seq " + replica.applied_seq + " · epoch " + replica.epoch),
          replica.error ? el("span", { class: "error" }, replica.error) : null);
        }) : [el("span", { class: "muted" }, "not assigned yet")])))));
      // Payload indexes, as "category (keyword), price (float)"; left out when none.
      const indexes = collection.payload_indexes || [];
      const payloadIndexes = indexes.length ? el("span", {
        class: "payload-indexes",
        "data-payload-indexes": indexes.map((index) => index.key + ":" + index.type).join(","),
      }, "payload indexes: " + indexes.map((index) => index.key + " (" + index.type + ")").join(", ")) : null;
      return el("div", { class: "collection", "data-collection": collection.name },
        el("div", { class: "collection-head" },
          el("span", { class: "name" }, collection.name),
          el("span", { class: "facts-inline" },
            "dim " + collection.dimension + " · " + collection.metric + " · " + collection.index_spec + " · ",
            payloadIndexes, payloadIndexes ? " · " : null,
            collection.num_shards + " shards × RF " + collection.replication_factor + " · " +
            number(collection.vectors) + " vectors · replicas per Searcher: max " +
            collection.max_replicas_per_searcher + ", mean " + collection.mean_replicas_per_searcher)),
        el("table", { class: "data" },
          el("thead", {}, el("tr", {},
            el("th", { scope: "col", class: "num" }, "Shard"),
            el("th", { scope: "col", class: "num" }, "Ring pos."),
            el("th", { scope: "col", class: "num" }, "Epoch"),
            el("th", { scope: "col" }, "Replicas (role, state, points, applied seq, epoch)"))),
          el("tbody", {}, ...rows)));
    }));
  }

  function received() {
    lastMessageAt = Date.now();
    setLive("live", "Live");
  }

  function follow() {
    if (typeof EventSource === "undefined") {
      poll();
      return;
    }
    const source = new EventSource("/api/status/events");
    source.addEventListener("snapshot", (event) => {
      received();
      render(JSON.parse(event.data));
    });
    source.addEventListener("heartbeat", (event) => {
      received();
      $("updated").textContent = new Date(event.data).toLocaleTimeString("en-GB", { hour12: false });
    });
    source.addEventListener("error", () => setLive("reconnecting", "Reconnecting…"));
  }

  async function poll() {
    try {
      const response = await fetch("/api/status", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      received();
    } catch (error) {
      setLive("reconnecting", "Reconnecting…");
    }
    setTimeout(poll, 1000);
  }

  setInterval(() => {
    if (lastMessageAt && Date.now() - lastMessageAt > STALE_AFTER_MS && $("live").getAttribute("data-live") === "live") {
      setLive("stale", "Stale");
    }
  }, 1000);

  follow();
})();
