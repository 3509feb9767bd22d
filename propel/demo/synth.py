"""A seeded synthetic e-commerce mobile app: profiles, hidden traits and an event stream.

The demo and the benchmarks need data whose *future* is learnable from its *past*, so
the generator is a small, explicit behavioural model rather than random noise:

* every user has hidden traits (activity rate, purchase propensity, price level, churn
  hazard, responsiveness to pushes, preferred hour) drawn once from a correlated
  population, so heavy users keep being heavy and buyers keep buying;
* sessions are a Poisson process at ``activity_rate`` per day, modulated by weekday and
  placed at the user's preferred local hour (IANA time zones, DST-aware), plus sessions
  started by clicking organic pushes at ``push_click_rate``;
* each session runs a funnel (views -> cart -> charge) whose conversion rates follow the
  propensity, so one session converts with probability ``purchase_propensity``;
* a user's life is healthy for ``healthy_days`` (exponential with ``churn_hazard``), then
  activity ramps linearly down over ``decline_days`` before the user goes silent
  (sometimes with an ``App Uninstalled``), so churn shows up in recency/frequency trends
  before it happens; some users sign up inside the generated period.

Because the model is explicit, :func:`purchase_probability` can state the true chance of
a purchase in a window, which is what a calibration check needs.

Everything is drawn per fixed block of users from ``SeedSequence([seed, stream, block])``,
so output depends only on the seed and arguments: never on ``chunk_users``, the process, or
the order of calls. Profiles and traits of user *i* also do not depend on how many users are
requested. Message ids are ``demo-<seed>-<n>``; regenerating a demo therefore re-sends the
same ids, and ingest deduplicates instead of doubling the data.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DEFAULT_END",
    "EVENT_NAMES",
    "EVENT_SCHEMA",
    "PROFILE_SCHEMA",
    "TRAIT_SCHEMA",
    "SyntheticApp",
    "generate_profiles",
    "generate_traits",
    "iter_events",
    "purchase_probability",
]

# A fixed, past default keeps output reproducible and passes ingest's "not in the future"
# check; the demo passes ``end=now`` explicitly.
DEFAULT_END = datetime(2025, 6, 1, tzinfo=UTC)

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

_TS = pa.timestamp("us", tz="UTC")
EVENT_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("identity", pa.string()),
        ("name", pa.string()),
        ("ts", _TS),
        ("properties", pa.string()),
    ]
)
PROFILE_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("timezone", pa.string()),
        ("country", pa.string()),
        ("platform", pa.string()),
        ("signup_ts", _TS),
        ("email_opt_in", pa.bool_()),
        ("push_opt_in", pa.bool_()),
        ("sms_opt_in", pa.bool_()),
    ]
)
TRAIT_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("activity_rate", pa.float64()),  # organic sessions/day while healthy
        ("purchase_propensity", pa.float64()),  # P(a session ends in Charged)
        ("views_per_session", pa.float64()),
        ("cart_rate", pa.float64()),  # P(a viewed product is added to cart)
        ("checkout_rate", pa.float64()),  # P(a session with a cart is charged)
        ("search_rate", pa.float64()),  # searches per session
        ("price_level", pa.float64()),  # multiplicative; 1 = median shopper
        ("favorite_category", pa.string()),
        ("churn_hazard", pa.float64()),  # per day, while healthy
        ("responsiveness", pa.float64()),  # P(click | push received)
        ("push_click_rate", pa.float64()),  # push-started sessions/day while healthy
        ("preferred_hour", pa.float64()),  # local hour of day, [0, 24)
        ("signup_days_ago", pa.float64()),  # before `end`
        ("healthy_days", pa.float64()),  # signup -> start of decline
        ("decline_days", pa.float64()),  # decline -> silent (churned)
        ("uninstalls", pa.bool_()),  # churn ends with an App Uninstalled event
    ]
)

_DAY_US = 86_400_000_000
_SECOND_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BLOCK = 10_000  # users per RNG block: fixed so results never depend on chunk sizes
_POPULATION, _EVENTS, _CATALOG = 0, 1, 2  # RNG streams
_NEW_USER_HORIZON_DAYS = 90.0  # `new_user_share` of users signed up within this many days

# Monday..Sunday; mean 1 so whole weeks keep the average activity rate.
_WEEKDAY = np.array([0.93, 0.95, 0.97, 1.00, 1.05, 1.12, 0.98])

# country, weight, dial code, national digits, first national digits (lo, hi), iOS share,
# time zones with weights
_COUNTRIES: tuple[tuple[str, float, str, int, tuple[int, int], float,
                        tuple[tuple[str, float], ...]], ...] = (
    ("US", 0.38, "1", 10, (2, 9), 0.55, (("America/New_York", 0.45), ("America/Chicago", 0.30),
                                        ("America/Denver", 0.07),
                                        ("America/Los_Angeles", 0.18))),
    ("GB", 0.08, "44", 10, (7, 7), 0.50, (("Europe/London", 1.0),)),
    ("DE", 0.07, "49", 11, (1, 1), 0.35, (("Europe/Berlin", 1.0),)),
    ("FR", 0.05, "33", 9, (6, 7), 0.35, (("Europe/Paris", 1.0),)),
    ("ES", 0.03, "34", 9, (6, 7), 0.30, (("Europe/Madrid", 1.0),)),
    ("IN", 0.12, "91", 10, (6, 9), 0.05, (("Asia/Kolkata", 1.0),)),
    ("BR", 0.08, "55", 11, (1, 9), 0.15, (("America/Sao_Paulo", 1.0),)),
    ("MX", 0.05, "52", 10, (1, 9), 0.20, (("America/Mexico_City", 1.0),)),
    ("JP", 0.05, "81", 10, (7, 9), 0.65, (("Asia/Tokyo", 1.0),)),
    ("AU", 0.04, "61", 9, (4, 4), 0.55, (("Australia/Sydney", 1.0),)),
    ("CA", 0.05, "1", 10, (2, 9), 0.50, (("America/Toronto", 0.7),
                                        ("America/Vancouver", 0.3))),
)
_TIMEZONES = tuple(tz for c in _COUNTRIES for tz, _ in c[6])

_FIRST = ("james", "mary", "wei", "priya", "lucas", "sofia", "hiro", "emma", "noah", "olivia",
          "arjun", "chloe", "mateo", "yuki", "liam", "ana", "omar", "lea", "ethan", "mia")
_LAST = ("smith", "garcia", "chen", "patel", "muller", "martin", "sato", "silva", "brown",
         "kumar", "lopez", "wilson", "tanaka", "dubois", "jones", "rossi", "kim", "singh")
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me", "example.com")

# category, share of users for whom it is the favourite, median price (USD), log-sd, queries
_CATEGORIES: tuple[tuple[str, float, float, float, tuple[str, ...]], ...] = (
    ("electronics", 0.18, 150.0, 0.8, ("headphones", "usb c cable", "laptop", "phone case",
                                       "smart watch", "bluetooth speaker")),
    ("fashion", 0.20, 40.0, 0.6, ("sneakers", "summer dress", "jeans", "hoodie", "sunglasses",
                                  "leather jacket")),
    ("home", 0.14, 55.0, 0.7, ("desk lamp", "bed sheets", "air fryer", "coffee maker",
                               "storage box", "throw pillow")),
    ("beauty", 0.12, 22.0, 0.5, ("sunscreen", "lipstick", "face serum", "shampoo", "perfume",
                                 "nail polish")),
    ("sports", 0.10, 45.0, 0.6, ("yoga mat", "running shoes", "dumbbells", "water bottle",
                                 "bike helmet", "tennis racket")),
    ("toys", 0.08, 28.0, 0.6, ("lego", "puzzle", "board game", "plush toy", "rc car",
                               "doll house")),
    ("grocery", 0.10, 9.0, 0.5, ("coffee beans", "olive oil", "protein bar", "green tea",
                                 "pasta", "dark chocolate")),
    ("books", 0.08, 15.0, 0.4, ("thriller", "cookbook", "fantasy novel", "biography",
                                "kids books", "self help")),
)
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
class SyntheticApp:
    """The knobs of the behavioural model, with defaults tuned to ~50 events per user per
    90 days and a ~11% two-week purchase rate. Frozen so an app value can be a cache key
    and shared by benchmarks without anyone mutating it mid-run."""

    seed: int = 7
    activity_median: float = 0.085  # organic sessions/day of the median healthy user
    activity_sigma: float = 1.0  # log-sd: heavy users are much heavier, as in real apps
    propensity_median: float = 0.05  # P(purchase | session) of the median user
    propensity_sigma: float = 0.9  # logit-sd
    lifetime_median_days: float = 365.0  # median time from signup to the start of decline
    new_user_share: float = 0.20  # share of users signed up in the last 90 days
    tenure_mean_days: float = 90.0  # older users: extra tenure beyond 90 days, exponential
    push_sends_per_day: float = 0.5  # organic pushes to opted-in users
    uninstall_share: float = 0.55  # churners who uninstall rather than just go quiet

    def __post_init__(self) -> None:
        seed = operator.index(self.seed)  # numpy integers are fine, floats are not
        if seed < 0:
            raise ValueError("seed must be a non-negative integer")
        object.__setattr__(self, "seed", int(seed))

    def profiles(self, users: int, end: datetime = DEFAULT_END) -> pa.Table:
        return _concat([_profiles_block(self, b, n, _end_us(end), _id_width(users))
                        for b, n in _blocks(users)], PROFILE_SCHEMA)

    def traits(self, users: int) -> pa.Table:
        return _concat([_traits_block(self, b, n, _id_width(users))
                        for b, n in _blocks(users)], TRAIT_SCHEMA)

    def events(self, users: int, days: int, end: datetime = DEFAULT_END,
               chunk_users: int = 50_000) -> Iterator[pa.Table]:
        return _iter_events(self, users, days, end, chunk_users)


def generate_profiles(users: int, seed: int = 7, *, end: datetime = DEFAULT_END) -> pa.Table:
    """Contact and consent data per user. ``end`` must match the one given to
    :func:`iter_events`, because ``signup_ts`` is placed relative to it (some users sign
    up inside the event window and their first ``App Launched`` is at ``signup_ts``)."""
    return SyntheticApp(seed=seed).profiles(users, end)


def generate_traits(users: int, seed: int = 7) -> pa.Table:
    """The hidden truth behind the events: never shown to the product, used to check that
    predictions recover it (calibration, uplift from ``responsiveness``). Times are in
    days relative to ``end`` so they hold for any ``end``."""
    return SyntheticApp(seed=seed).traits(users)


def iter_events(users: int, days: int, end: datetime = DEFAULT_END, seed: int = 7,
                chunk_users: int = 50_000) -> Iterator[pa.Table]:
    """Events of ``days`` days before ``end``, one table per ``chunk_users`` users so that
    1M users x 90 days (~50M events) never has to sit in memory at once. Rows are sorted
    by (identity, ts); output is identical for every ``chunk_users``."""
    return SyntheticApp(seed=seed).events(users, days, end, chunk_users)


def purchase_probability(traits: pa.Table, window_days: float, *,
                         start_days_before_end: float | None = None) -> np.ndarray:
    """True P(>=1 ``Charged`` in a window) per user of ``traits``, for calibration checks.

    The window defaults to the last ``window_days`` before ``end`` and must lie inside the
    generated period. It accounts for the user being not yet signed up, declining or
    churned during the window (the latent life-cycle in ``traits``) and for a signup-day
    first session. Weekday and hour-of-day modulation average out exactly over whole
    weeks, so use a multiple of 7 days for an exact answer; sessions cut off by ``end`` or
    by churn cause a negligible bias.
    """
    start = float(window_days if start_days_before_end is None else start_days_before_end)
    col = {name: traits.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
           for name in ("activity_rate", "push_click_rate", "purchase_propensity",
                        "signup_days_ago", "healthy_days", "decline_days")}
    signup = -col["signup_days_ago"]
    lo, hi = -start, -start + float(window_days)
    args = (signup, col["healthy_days"], col["decline_days"])
    exposure = _exposure(np.float64(hi), *args) - _exposure(np.float64(lo), *args)
    q = col["purchase_propensity"]
    sessions = (col["activity_rate"] + col["push_click_rate"]) * exposure
    first = (signup >= lo) & (signup < hi)
    return 1.0 - np.where(first, 1.0 - q, 1.0) * np.exp(-q * sessions)


# --------------------------------------------------------------------------- internals


def _end_us(end: datetime) -> int:
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return (end - _EPOCH) // timedelta(microseconds=1)


def _blocks(users: int) -> list[tuple[int, int]]:
    users = operator.index(users)
    if users < 0:
        raise ValueError("users must be >= 0")
    return [(b, min(_BLOCK, users - b * _BLOCK)) for b in range(math.ceil(users / _BLOCK))]


def _id_width(users: int) -> int:
    return max(6, len(str(max(users - 1, 0))))


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _identities(block: int, n: int, width: int) -> pa.Array:
    idx = pa.array(np.arange(block * _BLOCK, block * _BLOCK + n, dtype=np.int64))
    return pc.binary_join_element_wise("u", pc.utf8_lpad(pc.cast(idx, pa.string()), width, "0"),
                                       "")


def _exposure(t: np.ndarray, signup: np.ndarray, healthy: np.ndarray,
              decline: np.ndarray) -> np.ndarray:
    """Activity-weighted time alive up to ``t`` (days): 1 while healthy, a linear ramp
    from 1 to 0 during decline, 0 before signup and after churn."""
    x = t - signup
    ramp = np.clip(x - healthy, 0.0, decline)
    return np.clip(x, 0.0, healthy) + ramp - ramp * ramp / (2.0 * decline)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@lru_cache(maxsize=8)
def _population(app: SyntheticApp, block: int) -> dict[str, np.ndarray]:
    """All per-user draws of one full block. Always drawn for ``_BLOCK`` users (then cut)
    so user *i* is the same whatever the population size."""
    rng = np.random.default_rng([app.seed, _POPULATION, block])
    size = _BLOCK
    z_act, z_prop, z_haz, z_price = rng.standard_normal((4, size))
    # Engaged users buy more and churn less: the correlations make past activity a
    # signal of both future purchases and survival, as in real apps.
    z_prop = 0.35 * z_act + math.sqrt(1 - 0.35**2) * z_prop
    z_haz = -0.40 * z_act + math.sqrt(1 - 0.40**2) * z_haz

    activity = np.clip(app.activity_median * np.exp(app.activity_sigma * z_act), 0.003, 6.0)
    logit_q = math.log(app.propensity_median / (1 - app.propensity_median))
    propensity = np.clip(_sigmoid(logit_q + app.propensity_sigma * z_prop), 0.002, 0.5)
    checkout = 0.3 + 0.5 * np.sqrt(propensity)  # > propensity for propensity <= 0.5
    cart_lambda = -np.log1p(-propensity / checkout)  # carts/session giving P(>=1) right
    views = np.maximum(1.2 + rng.gamma(2.0, 0.6, size), cart_lambda / 0.9)
    cart_rate = cart_lambda / views
    search_rate = 0.15 + 0.5 * rng.random(size)
    price_level = np.exp(0.45 * z_price)
    cat_p = np.array([c[1] for c in _CATEGORIES])
    favorite = rng.choice(len(_CATEGORIES), size=size, p=cat_p / cat_p.sum())

    hazard = np.exp(0.7 * z_haz) / app.lifetime_median_days
    healthy = rng.exponential(1.0, size) / hazard
    decline = rng.uniform(10.0, 35.0, size)
    uninstalls = rng.random(size) < app.uninstall_share
    responsiveness = rng.beta(1.5, 12.0, size)

    peak = rng.choice(3, size=size, p=[0.2, 0.25, 0.55])
    hour = (np.array([8.0, 12.5, 20.5])[peak]
            + rng.standard_normal(size) * np.array([1.0, 1.0, 1.5])[peak]) % 24.0

    is_new = rng.random(size) < app.new_user_share
    signup_ago = np.where(is_new, rng.uniform(0.0, _NEW_USER_HORIZON_DAYS, size),
                          _NEW_USER_HORIZON_DAYS + rng.exponential(app.tenure_mean_days, size))

    weights = np.array([c[1] for c in _COUNTRIES])
    country = rng.choice(len(_COUNTRIES), size=size, p=weights / weights.sum())
    tz_u = rng.random(size)
    tz = np.zeros(size, dtype=np.int64)
    offset = 0
    for ci, c in enumerate(_COUNTRIES):
        cum = np.cumsum([w for _, w in c[6]])
        pick = np.minimum(np.searchsorted(cum / cum[-1], tz_u, side="right"), len(cum) - 1)
        tz = np.where(country == ci, offset + pick, tz)
        offset += len(c[6])
    ios = rng.random(size) < np.array([c[5] for c in _COUNTRIES])[country]
    has_email = rng.random(size) < 0.95
    first = rng.integers(0, len(_FIRST), size)
    last = rng.integers(0, len(_LAST), size)
    domain = rng.integers(0, len(_DOMAINS), size)
    has_phone = rng.random(size) < 0.65
    phone_shift = int(rng.integers(0, 1 << 40))
    email_in = has_email & (rng.random(size) < 0.55)
    push_in = rng.random(size) < np.where(ios, 0.55, 0.80)
    sms_in = has_phone & (rng.random(size) < 0.25)

    return {
        "activity": activity, "propensity": propensity, "views": views,
        "cart_rate": cart_rate, "checkout": checkout, "search_rate": search_rate,
        "price_level": price_level, "price_z": z_price, "favorite": favorite,
        "hazard": hazard, "healthy": healthy, "decline": decline, "uninstalls": uninstalls,
        "responsiveness": responsiveness,
        "push_rate": app.push_sends_per_day * responsiveness * push_in,
        "hour": hour, "signup_ago": signup_ago, "country": country, "tz": tz, "ios": ios,
        "has_email": has_email, "first": first, "last": last, "domain": domain,
        "has_phone": has_phone, "phone_shift": np.array([phone_shift]),
        "email_in": email_in, "push_in": push_in, "sms_in": sms_in,
    }


def _pop(app: SyntheticApp, block: int, n: int) -> dict[str, np.ndarray]:
    full = _population(app, block)
    return {k: v if k == "phone_shift" else v[:n] for k, v in full.items()}


def _signup_us(end_us: int, signup_ago: np.ndarray) -> np.ndarray:
    return end_us - np.round(signup_ago * _DAY_US).astype(np.int64)


def _profiles_block(app: SyntheticApp, block: int, n: int, end_us: int, width: int) -> pa.Table:
    p = _pop(app, block, n)
    ident = _identities(block, n, width)
    gidx = np.arange(block * _BLOCK, block * _BLOCK + n, dtype=np.int64)
    email = pc.binary_join_element_wise(
        pa.array(_FIRST).take(p["first"]), ".", pa.array(_LAST).take(p["last"]),
        pc.cast(pa.array(gidx), pa.string()), "@", pa.array(_DOMAINS).take(p["domain"]), "")
    # Phones: a bijection of the user index inside each country's number range keeps them
    # unique, so identity resolution by phone never merges two demo users.
    lo = np.array([c[4][0] * 10 ** (c[3] - 1) for c in _COUNTRIES], dtype=np.int64)
    span = np.array([(c[4][1] - c[4][0] + 1) * 10 ** (c[3] - 1) for c in _COUNTRIES],
                    dtype=np.int64)
    c = p["country"]
    mixed = (gidx * 2_654_435_761 + int(p["phone_shift"][0])) % span[c]
    national = pc.cast(pa.array(lo[c] + mixed), pa.string())
    dial = pa.array(["+" + x[2] for x in _COUNTRIES]).take(c)
    phone = pc.binary_join_element_wise(dial, national, "")
    null = pa.scalar(None, pa.string())
    return pa.table(
        {
            "identity": ident,
            "email": pc.if_else(pa.array(p["has_email"]), email, null),
            "phone": pc.if_else(pa.array(p["has_phone"]), phone, null),
            "timezone": pa.array(_TIMEZONES).take(p["tz"]),
            "country": pa.array([x[0] for x in _COUNTRIES]).take(c),
            "platform": pa.array(["android", "ios"]).take(p["ios"].astype(np.int8)),
            "signup_ts": pa.array(_signup_us(end_us, p["signup_ago"]), type=_TS),
            "email_opt_in": pa.array(p["email_in"]),
            "push_opt_in": pa.array(p["push_in"]),
            "sms_opt_in": pa.array(p["sms_in"]),
        },
        schema=PROFILE_SCHEMA,
    )


def _traits_block(app: SyntheticApp, block: int, n: int, width: int) -> pa.Table:
    p = _pop(app, block, n)
    cols = {
        "identity": _identities(block, n, width),
        "activity_rate": p["activity"],
        "purchase_propensity": p["propensity"],
        "views_per_session": p["views"],
        "cart_rate": p["cart_rate"],
        "checkout_rate": p["checkout"],
        "search_rate": p["search_rate"],
        "price_level": p["price_level"],
        "favorite_category": pa.array([c[0] for c in _CATEGORIES]).take(p["favorite"]),
        "churn_hazard": p["hazard"],
        "responsiveness": p["responsiveness"],
        "push_click_rate": p["push_rate"],
        "preferred_hour": p["hour"],
        "signup_days_ago": p["signup_ago"],
        "healthy_days": p["healthy"],
        "decline_days": p["decline"],
        "uninstalls": p["uninstalls"],
    }
    return pa.table(cols, schema=TRAIT_SCHEMA)


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
    rng = np.random.default_rng([seed, _CATALOG, 0])
    cats, cents = [], []
    for ci, (_, _, median, sd, _) in enumerate(_CATEGORIES):
        price = np.sort(median * np.exp(sd * rng.standard_normal(_PRODUCTS_PER_CATEGORY)))
        cents.append(np.floor(price).astype(np.int64) * 100 + 99)  # "x.99" shelf prices
        cats.append(np.full(_PRODUCTS_PER_CATEGORY, ci))
    category, price_cents = np.concatenate(cats), np.concatenate(cents)
    names = [c[0] for c in _CATEGORIES]
    view, cart = [], []
    for i, (ci, pcents) in enumerate(zip(category, price_cents, strict=True)):
        pid, price = f"p{i:05d}", f"{pcents // 100}.{pcents % 100:02d}"
        view.append(f'{{"product_id":"{pid}","category":"{names[ci]}","price":{price}}}')
        cart.append(f'{{"product_id":"{pid}","price":{price}}}')
    queries = [json.dumps({"query": q}, separators=_COMPACT)
               for c in _CATEGORIES for q in c[4]]
    sizes = np.array([len(c[4]) for c in _CATEGORIES])
    return _Catalog(
        category=category,
        price_cents=price_cents,
        cat_start=np.arange(len(_CATEGORIES)) * _PRODUCTS_PER_CATEGORY,
        cat_size=np.full(len(_CATEGORIES), _PRODUCTS_PER_CATEGORY),
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
    bounds = np.empty((len(_TIMEZONES), k + 1))
    dow = np.empty((len(_TIMEZONES), k), dtype=np.int64)
    start = _EPOCH + timedelta(microseconds=t0_us)
    for i, name in enumerate(_TIMEZONES):
        zone = ZoneInfo(name)
        first = start.astimezone(zone).date()
        for j in range(k + 1):
            d = first + timedelta(days=j)
            midnight = datetime.combine(d, time(0), tzinfo=zone)
            bounds[i, j] = ((midnight - _EPOCH) // timedelta(microseconds=1) - t0_us) / _DAY_US
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


def _block_events(app: SyntheticApp, block: int, n: int, days: int, end_us: int,
                  grid: tuple[np.ndarray, np.ndarray], id_base: int, width: int
                  ) -> tuple[pa.Table, np.ndarray]:
    p = _pop(app, block, n)
    cat = _catalog(app.seed)
    rng = np.random.default_rng([app.seed, _EVENTS, block])
    t0_us = end_us - days * _DAY_US
    fdays = float(days)

    # --- sessions: Poisson per user x local day, from the activity-weighted exposure
    signup = fdays - p["signup_ago"]  # days since the window start
    healthy, decline = p["healthy"], p["decline"]
    death = signup + healthy + decline
    bounds = grid[0][p["tz"]]  # (n, K+1), may start before 0 and end after `days`
    dow = grid[1][p["tz"]]
    clipped = np.clip(bounds, 0.0, fdays)
    life = (signup[:, None], healthy[:, None], decline[:, None])
    exposure = np.diff(_exposure(clipped, *life), axis=1)
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
    signup_us = _signup_us(end_us, p["signup_ago"])

    s_user = np.concatenate([ou, newcomer, pu])
    s_start = np.concatenate([
        t0_us + np.round(org_t * _DAY_US).astype(np.int64),
        signup_us[newcomer],  # a newcomer's first launch is the signup itself
        t0_us + np.round(push_t * _DAY_US).astype(np.int64),
    ])
    n_sess = len(s_user)
    from_push = np.zeros(n_sess, dtype=bool)
    from_push[len(ou) + len(newcomer):] = True
    # campaign: the two scheduled sends, sometimes a triggered one instead
    campaign = np.where(rng.random(len(pu)) < 0.7, send, rng.integers(2, 4, len(pu)))
    launch_delay = np.where(from_push, rng.integers(2 * _SECOND_US, 9 * _SECOND_US, n_sess), 0)

    # --- funnel inside each session
    n_views = rng.poisson(p["views"][s_user])
    n_search = rng.poisson(p["search_rate"][s_user])
    v_sess, v_first = _segment_ids(n_views)
    v_user = s_user[v_sess]
    gaps = rng.exponential(35.0 * _SECOND_US, len(v_sess)).astype(np.int64) + 4 * _SECOND_US
    csum = np.cumsum(gaps)
    v_off = csum - (csum - gaps)[v_first[v_sess]] + launch_delay[v_sess]
    v_ts = s_start[v_sess] + v_off
    # products: near the user's price level, often from the favourite category
    center = _sigmoid(1.702 * p["price_z"][v_user])
    quantile = np.clip(center + 0.2 * rng.standard_normal(len(v_sess)), 0.0, 0.999)
    fav = rng.random(len(v_sess)) < 0.45
    fcat = p["favorite"][v_user]
    product = np.where(
        fav,
        cat.cat_start[fcat] + (quantile * cat.cat_size[fcat]).astype(np.int64),
        cat.by_price[(quantile * len(cat.by_price)).astype(np.int64)],
    )
    carted = rng.random(len(v_sess)) < p["cart_rate"][v_user]
    cart_delay = _SECOND_US + np.minimum(rng.exponential(12.0 * _SECOND_US, len(v_sess)),
                                         25.0 * _SECOND_US).astype(np.int64)
    c_idx = np.flatnonzero(carted)
    c_ts = v_ts[c_idx] + cart_delay[c_idx]
    c_sess = v_sess[c_idx]
    items = np.bincount(c_sess, minlength=n_sess)
    amount = np.round(np.bincount(c_sess, weights=cat.price_cents[product[c_idx]],
                                  minlength=n_sess)).astype(np.int64)
    charged = np.flatnonzero((items > 0) & (rng.random(n_sess) < p["checkout"][s_user]))
    last_view = v_off[np.maximum(v_first + n_views - 1, 0)] if len(v_off) else v_first
    ch_ts = (s_start[charged] + last_view[charged] + 30 * _SECOND_US
             + rng.exponential(60.0 * _SECOND_US, len(charged)).astype(np.int64))

    q_sess, _ = _segment_ids(n_search)
    q_user = s_user[q_sess]
    q_ts = (s_start[q_sess] + launch_delay[q_sess]
            + rng.integers(_SECOND_US, 90 * _SECOND_US, len(q_sess)))
    q_cat = np.where(rng.random(len(q_sess)) < 0.6, p["favorite"][q_user],
                     rng.integers(0, len(_CATEGORIES), len(q_sess)))
    query = cat.query_cat_start[q_cat] + rng.integers(0, len(_CATEGORIES[0][4]), len(q_sess))

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
        u_ts = np.maximum(t0_us + np.round(death[quitter] * _DAY_US).astype(np.int64),
                          last[quitter] + 5 * _SECOND_US)
        parts.append((quitter, u_ts, _UNINSTALL, np.full(len(quitter), base[6])))

    users = np.concatenate([x[0] for x in parts])
    ts = np.concatenate([x[1] for x in parts])
    code = np.concatenate([np.full(len(x[0]), x[2], dtype=np.int8) for x in parts])
    src = np.concatenate([x[3] for x in parts])
    keep = np.flatnonzero(ts < end_us)  # sessions may spill past `end`
    # Within a session every kind is strictly later than the one before it, so (user, ts)
    # is a complete order; one int64 key sorts far faster than a lexsort.
    span = (days + 1) * _DAY_US
    if _BLOCK * span < np.iinfo(np.int64).max:
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
            "identity": _identities(block, n, width).take(users.astype(np.int32)),
            "name": _NAMES.take(code.astype(np.int32)),
            "ts": pa.array(ts, type=_TS),
            "properties": props.take(src[order].astype(np.int32)),
        },
        schema=EVENT_SCHEMA,
    )
    return table, np.bincount(users, minlength=n)


def _iter_events(app: SyntheticApp, users: int, days: int, end: datetime,
                 chunk_users: int) -> Iterator[pa.Table]:
    # Checked here, not inside the generator, so bad arguments fail at the call site.
    if days < 1 or int(days) != days:
        raise ValueError("days must be a positive integer")
    if chunk_users < 1:
        raise ValueError("chunk_users must be >= 1")
    _blocks(users)
    return _event_chunks(app, users, int(days), _end_us(end), int(chunk_users))


def _event_chunks(app: SyntheticApp, users: int, days: int, end_us: int,
                  chunk_users: int) -> Iterator[pa.Table]:
    grid = _day_grid(end_us - days * _DAY_US, days)
    width = _id_width(users)
    pending: list[tuple[int, np.ndarray, pa.Table]] = []  # (first user, row offsets, table)
    next_id, lo = 0, 0
    for block, n in _blocks(users):
        table, counts = _block_events(app, block, n, days, end_us, grid, next_id, width)
        next_id += table.num_rows
        pending.append((block * _BLOCK, np.concatenate([[0], np.cumsum(counts)]), table))
        covered = block * _BLOCK + n
        while lo < covered and (covered - lo >= chunk_users or covered == users):
            hi = min(lo + chunk_users, covered)
            pieces = []
            for first, offsets, tab in pending:
                a, b = max(lo, first), min(hi, first + len(offsets) - 1)
                if a < b:
                    start = int(offsets[a - first])
                    pieces.append(tab.slice(start, int(offsets[b - first]) - start))
            yield pieces[0] if len(pieces) == 1 else _concat(pieces, EVENT_SCHEMA)
            lo = hi
            pending = [x for x in pending if x[0] + len(x[1]) - 1 > lo]
