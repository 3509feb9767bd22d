"""The event simulation: the product catalog, local day grids, sessions and their
funnels per block of users (``App Launched`` ... ``App Uninstalled``), and the stream of
event tables in chunks of users.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from propel.demo.synth_model import (
    BLOCK,
    CATALOG_STREAM,
    DAY_US,
    EPOCH,
    EVENT_STREAM,
    SECOND_US,
    TS,
    AppParams,
    concat,
    id_width,
    identities,
    life_exposure,
    sigmoid,
    to_epoch_us,
    user_blocks,
)
from propel.demo.synth_population import (
    CATEGORIES,
    TIMEZONES,
    population_block,
    signup_times_us,
)

EVENT_NAMES = (
    "App Launched",
    "Product Viewed",
    "Search",
    "Added To Cart",
    "Charged",
    "Notification Clicked",
    "App Uninstalled",
)
_LAUNCH, _VIEW, _SEARCH, _CART, _CHARGE, _CLICK, _UNINSTALL = range(len(EVENT_NAMES))

EVENT_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("identity", pa.string()),
        ("name", pa.string()),
        ("ts", TS),
        ("properties", pa.string()),
    ]
)

# Monday..Sunday; mean 1 so whole weeks keep the average activity rate.
_WEEKDAY = np.array([0.93, 0.95, 0.97, 1.00, 1.05, 1.12, 0.98])

_PRODUCTS_PER_CATEGORY = 150
_CAMPAIGNS = ("midday_deals", "evening_picks", "price_drop", "back_in_stock")
_PUSH_HOURS = np.array([11.0, 18.5])  # local send times of the organic push campaigns
_COMPACT = (",", ":")
_LAUNCH_KINDS = pa.array([json.dumps({"platform": plat, "source": src}, separators=_COMPACT)
                          for plat in ("android", "ios") for src in ("organic", "push")])
_CLICK_KINDS = pa.array([json.dumps({"campaign": c, "channel": "push"}, separators=_COMPACT)
                         for c in _CAMPAIGNS])
_EMPTY_PROPS = pa.array(["{}"])
_NAMES = pa.array(EVENT_NAMES)


@dataclass(frozen=True)
class _Catalog:
    category: np.ndarray  # per product, products sorted by (category, price)
    price_cents: np.ndarray
    cat_start: np.ndarray
    cat_size: np.ndarray
    by_price: np.ndarray  # product indices in global price order
    view_props: pa.Array
    cart_props: pa.Array
    query_cat_start: np.ndarray
    query_props: pa.Array


@lru_cache(maxsize=8)
def _catalog(seed: int) -> _Catalog:
    rng = np.random.default_rng([seed, CATALOG_STREAM, 0])
    cats, cents = [], []
    for ci, (_, _, median, sd, _) in enumerate(CATEGORIES):
        price = np.sort(median * np.exp(sd * rng.standard_normal(_PRODUCTS_PER_CATEGORY)))
        cents.append(np.floor(price).astype(np.int64) * 100 + 99)  # "x.99" shelf prices
        cats.append(np.full(_PRODUCTS_PER_CATEGORY, ci))
    category, price_cents = np.concatenate(cats), np.concatenate(cents)
    names = [c[0] for c in CATEGORIES]
    view, cart = [], []
    for i, (ci, pcents) in enumerate(zip(category, price_cents, strict=True)):
        pid, price = f"p{i:05d}", f"{pcents // 100}.{pcents % 100:02d}"
        view.append(f'{{"product_id":"{pid}","category":"{names[ci]}","price":{price}}}')
        cart.append(f'{{"product_id":"{pid}","price":{price}}}')
    queries = [json.dumps({"query": q}, separators=_COMPACT)
               for c in CATEGORIES for q in c[4]]
    sizes = np.array([len(c[4]) for c in CATEGORIES])
    return _Catalog(
        category=category,
        price_cents=price_cents,
        cat_start=np.arange(len(CATEGORIES)) * _PRODUCTS_PER_CATEGORY,
        cat_size=np.full(len(CATEGORIES), _PRODUCTS_PER_CATEGORY),
        by_price=np.argsort(price_cents, kind="stable"),
        view_props=pa.array(view),
        cart_props=pa.array(cart),
        query_cat_start=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
        query_props=pa.array(queries),
    )


def _day_grid(t0_us: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Local midnights of every zone, in days since the window start, and local weekdays:
    sessions are drawn per local day so weekday and hour patterns follow the user's clock
    (including DST shifts), not UTC."""
    k = days + 2
    bounds = np.empty((len(TIMEZONES), k + 1))
    dow = np.empty((len(TIMEZONES), k), dtype=np.int64)
    start = EPOCH + timedelta(microseconds=t0_us)
    for i, name in enumerate(TIMEZONES):
        zone = ZoneInfo(name)
        first = start.astimezone(zone).date()
        for j in range(k + 1):
            d = first + timedelta(days=j)
            midnight = datetime.combine(d, time(0), tzinfo=zone)
            bounds[i, j] = ((midnight - EPOCH) // timedelta(microseconds=1) - t0_us) / DAY_US
            if j < k:
                dow[i, j] = d.weekday()
    return bounds, dow


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, day) of every session from a users x days count matrix."""
    cells = np.flatnonzero(counts)
    cell = np.repeat(cells, counts.ravel()[cells])
    return np.divmod(cell, counts.shape[1])


def _segment_ids(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items grouped by owner: owner index of each item and the owner's first item."""
    owner = np.repeat(np.arange(len(counts)), counts)
    start = np.cumsum(counts) - counts
    return owner, start


def _block_events(app: AppParams, block: int, n: int, days: int, end_us: int,
                  grid: tuple[np.ndarray, np.ndarray], id_base: int, width: int
                  ) -> tuple[pa.Table, np.ndarray]:
    p = population_block(app, block, n)
    cat = _catalog(app.seed)
    rng = np.random.default_rng([app.seed, EVENT_STREAM, block])
    t0_us = end_us - days * DAY_US
    fdays = float(days)

    # --- sessions: Poisson per user x local day, from the activity-weighted exposure
    signup = fdays - p["signup_ago"]  # days since the window start
    healthy, decline = p["healthy"], p["decline"]
    death = signup + healthy + decline
    bounds = grid[0][p["tz"]]  # (n, K+1), may start before 0 and end after `days`
    dow = grid[1][p["tz"]]
    clipped = np.clip(bounds, 0.0, fdays)
    life = (signup[:, None], healthy[:, None], decline[:, None])
    exposure = np.diff(life_exposure(clipped, *life), axis=1)
    n_org = rng.poisson(p["activity"][:, None] * _WEEKDAY[dow] * exposure)
    n_push = rng.poisson(p["push_rate"][:, None] * exposure)

    def place(user: np.ndarray, day: np.ndarray, hour: np.ndarray) -> np.ndarray:
        # The local hour maps into the local day; a session that would fall outside the
        # alive-and-in-window part of that day is moved uniformly into it, which keeps
        # the drawn count (and so purchase_probability) exact.
        a, b = bounds[user, day], bounds[user, day + 1]
        t = a + hour / 24.0 * (b - a)
        lo = np.maximum(clipped[user, day], signup[user])
        hi = np.minimum(clipped[user, day + 1], death[user])
        fix = (t < lo) | (t >= hi)
        return np.where(fix, lo + rng.random(len(t)) * (hi - lo), t)

    ou, od = _expand(n_org)
    habitual = rng.random(len(ou)) < 0.75
    hour = np.where(habitual, p["hour"][ou] + 1.3 * rng.standard_normal(len(ou)),
                    rng.uniform(7.0, 24.0, len(ou))) % 24.0
    org_t = place(ou, od, hour)
    pu, pd = _expand(n_push)
    send = rng.integers(0, len(_PUSH_HOURS), len(pu))
    push_hour = _PUSH_HOURS[send] + np.minimum(rng.exponential(0.5, len(pu)), 4.0)
    push_t = place(pu, pd, push_hour)
    newcomer = np.flatnonzero((signup >= 0.0) & (signup < fdays))
    signup_us = signup_times_us(end_us, p["signup_ago"])

    s_user = np.concatenate([ou, newcomer, pu])
    s_start = np.concatenate([
        t0_us + np.round(org_t * DAY_US).astype(np.int64),
        signup_us[newcomer],  # a newcomer's first launch is the signup itself
        t0_us + np.round(push_t * DAY_US).astype(np.int64),
    ])
    n_sess = len(s_user)
    from_push = np.zeros(n_sess, dtype=bool)
    from_push[len(ou) + len(newcomer):] = True
    # campaign: the two scheduled sends, sometimes a triggered one instead
    campaign = np.where(rng.random(len(pu)) < 0.7, send, rng.integers(2, 4, len(pu)))
    launch_delay = np.where(from_push, rng.integers(2 * SECOND_US, 9 * SECOND_US, n_sess), 0)

    # --- funnel inside each session
    n_views = rng.poisson(p["views"][s_user])
    n_search = rng.poisson(p["search_rate"][s_user])
    v_sess, v_first = _segment_ids(n_views)
    v_user = s_user[v_sess]
    gaps = rng.exponential(35.0 * SECOND_US, len(v_sess)).astype(np.int64) + 4 * SECOND_US
    csum = np.cumsum(gaps)
    v_off = csum - (csum - gaps)[v_first[v_sess]] + launch_delay[v_sess]
    v_ts = s_start[v_sess] + v_off
    # products: near the user's price level, often from the favourite category
    center = sigmoid(1.702 * p["price_z"][v_user])
    quantile = np.clip(center + 0.2 * rng.standard_normal(len(v_sess)), 0.0, 0.999)
    fav = rng.random(len(v_sess)) < 0.45
    fcat = p["favorite"][v_user]
    product = np.where(
        fav,
        cat.cat_start[fcat] + (quantile * cat.cat_size[fcat]).astype(np.int64),
        cat.by_price[(quantile * len(cat.by_price)).astype(np.int64)],
    )
    carted = rng.random(len(v_sess)) < p["cart_rate"][v_user]
    cart_delay = SECOND_US + np.minimum(rng.exponential(12.0 * SECOND_US, len(v_sess)),
                                         25.0 * SECOND_US).astype(np.int64)
    c_idx = np.flatnonzero(carted)
    c_ts = v_ts[c_idx] + cart_delay[c_idx]
    c_sess = v_sess[c_idx]
    items = np.bincount(c_sess, minlength=n_sess)
    amount = np.round(np.bincount(c_sess, weights=cat.price_cents[product[c_idx]],
                                  minlength=n_sess)).astype(np.int64)
    charged = np.flatnonzero((items > 0) & (rng.random(n_sess) < p["checkout"][s_user]))
    last_view = v_off[np.maximum(v_first + n_views - 1, 0)] if len(v_off) else v_first
    ch_ts = (s_start[charged] + last_view[charged] + 30 * SECOND_US
             + rng.exponential(60.0 * SECOND_US, len(charged)).astype(np.int64))

    q_sess, _ = _segment_ids(n_search)
    q_user = s_user[q_sess]
    q_ts = (s_start[q_sess] + launch_delay[q_sess]
            + rng.integers(SECOND_US, 90 * SECOND_US, len(q_sess)))
    q_cat = np.where(rng.random(len(q_sess)) < 0.6, p["favorite"][q_user],
                     rng.integers(0, len(CATEGORIES), len(q_sess)))
    query = cat.query_cat_start[q_cat] + rng.integers(0, len(CATEGORIES[0][4]), len(q_sess))

    # --- charge properties, formatted by Arrow so 50M events stay vectorised
    def text(values: np.ndarray) -> pa.Array:
        return pc.cast(pa.array(values), pa.string())

    charge_props = pc.binary_join_element_wise(
        '{"amount":', text(amount[charged] // 100), ".",
        pc.utf8_lpad(text(amount[charged] % 100), 2, "0"),
        ',"items":', text(items[charged]), ',"currency":"USD"}', "")
    push_idx = np.flatnonzero(from_push)

    # Properties: one source array (small per-kind texts, the catalog, this block's charge
    # texts) and one index per event, so the column is built by a single take at the end.
    sources = [_LAUNCH_KINDS, cat.view_props, cat.query_props, cat.cart_props, charge_props,
               _CLICK_KINDS, _EMPTY_PROPS]
    base = np.cumsum([0] + [len(x) for x in sources])
    parts = [  # (user, ts, code, index into sources)
        (s_user, s_start + launch_delay, _LAUNCH,
         base[0] + p["ios"][s_user].astype(np.int64) * 2 + from_push),
        (v_user, v_ts, _VIEW, base[1] + product),
        (q_user, q_ts, _SEARCH, base[2] + query),
        (v_user[c_idx], c_ts, _CART, base[3] + product[c_idx]),
        (s_user[charged], ch_ts, _CHARGE, base[4] + np.arange(len(charged))),
        # a click whose app launch would fall after `end` is dropped with it
        (s_user[push_idx], np.where(s_start + launch_delay < end_us, s_start, end_us)[push_idx],
         _CLICK, base[5] + campaign),
    ]

    # --- churn: at most one uninstall, after everything the user did
    quitter = np.flatnonzero(p["uninstalls"] & (death >= 0.0) & (death < fdays))
    if len(quitter):
        quits = np.zeros(n, dtype=bool)
        quits[quitter] = True
        last = np.full(n, np.iinfo(np.int64).min)
        for user, ts, _, _ in parts:
            sel = quits[user] & (ts < end_us)
            np.maximum.at(last, user[sel], ts[sel])
        u_ts = np.maximum(t0_us + np.round(death[quitter] * DAY_US).astype(np.int64),
                          last[quitter] + 5 * SECOND_US)
        parts.append((quitter, u_ts, _UNINSTALL, np.full(len(quitter), base[6])))

    users = np.concatenate([x[0] for x in parts])
    ts = np.concatenate([x[1] for x in parts])
    code = np.concatenate([np.full(len(x[0]), x[2], dtype=np.int8) for x in parts])
    src = np.concatenate([x[3] for x in parts])
    keep = np.flatnonzero(ts < end_us)  # sessions may spill past `end`
    # Within a session every kind is strictly later than the one before it, so (user, ts)
    # is a complete order; one int64 key sorts far faster than a lexsort.
    span = (days + 1) * DAY_US
    if BLOCK * span < np.iinfo(np.int64).max:
        order = keep[np.argsort(users[keep] * span + (ts[keep] - t0_us), kind="stable")]
    else:
        order = keep[np.lexsort((ts[keep], users[keep]))]
    users, ts, code = users[order], ts[order], code[order]
    props = pa.concat_arrays(sources)
    ids = pa.array(np.arange(id_base, id_base + len(order), dtype=np.int64))
    table = pa.table(
        {
            "message_id": pc.binary_join_element_wise(f"demo-{app.seed}-",
                                                      pc.cast(ids, pa.string()), ""),
            "identity": identities(block, n, width).take(users.astype(np.int32)),
            "name": _NAMES.take(code.astype(np.int32)),
            "ts": pa.array(ts, type=TS),
            "properties": props.take(src[order].astype(np.int32)),
        },
        schema=EVENT_SCHEMA,
    )
    return table, np.bincount(users, minlength=n)


def stream_events(app: AppParams, users: int, days: int, end: datetime,
                  chunk_users: int) -> Iterator[pa.Table]:
    """Event tables of ``app``, one per ``chunk_users`` users (see ``iter_events``)."""
    # Checked here, not inside the generator, so bad arguments fail at the call site.
    if days < 1 or int(days) != days:
        raise ValueError("days must be a positive integer")
    if chunk_users < 1:
        raise ValueError("chunk_users must be >= 1")
    user_blocks(users)
    return _event_chunks(app, users, int(days), to_epoch_us(end), int(chunk_users))


def _event_chunks(app: AppParams, users: int, days: int, end_us: int,
                  chunk_users: int) -> Iterator[pa.Table]:
    grid = _day_grid(end_us - days * DAY_US, days)
    width = id_width(users)
    pending: list[tuple[int, np.ndarray, pa.Table]] = []  # (first user, row offsets, table)
    next_id, lo = 0, 0
    for block, n in user_blocks(users):
        table, counts = _block_events(app, block, n, days, end_us, grid, next_id, width)
        next_id += table.num_rows
        pending.append((block * BLOCK, np.concatenate([[0], np.cumsum(counts)]), table))
        covered = block * BLOCK + n
        while lo < covered and (covered - lo >= chunk_users or covered == users):
            hi = min(lo + chunk_users, covered)
            pieces = []
            for first, offsets, tab in pending:
                a, b = max(lo, first), min(hi, first + len(offsets) - 1)
                if a < b:
                    start = int(offsets[a - first])
                    pieces.append(tab.slice(start, int(offsets[b - first]) - start))
            yield pieces[0] if len(pieces) == 1 else concat(pieces, EVENT_SCHEMA)
            lo = hi
            pending = [x for x in pending if x[0] + len(x[1]) - 1 > lo]
