"""Who the synthetic users are: countries, time zones, names, product-category tastes,
the hidden behavioural traits drawn per block (``population_block``) and the profile and
trait tables built from them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from propel.demo.synth_model import (
    BLOCK,
    DAY_US,
    POPULATION_STREAM,
    TS,
    AppParams,
    identities,
    sigmoid,
)

PROFILE_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("timezone", pa.string()),
        ("country", pa.string()),
        ("platform", pa.string()),
        ("signup_ts", TS),
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

_NEW_USER_HORIZON_DAYS = 90.0  # `new_user_share` of users signed up within this many days

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
TIMEZONES = tuple(tz for c in _COUNTRIES for tz, _ in c[6])

_FIRST = ("james", "mary", "wei", "priya", "lucas", "sofia", "hiro", "emma", "noah", "olivia",
          "arjun", "chloe", "mateo", "yuki", "liam", "ana", "omar", "lea", "ethan", "mia")
_LAST = ("smith", "garcia", "chen", "patel", "muller", "martin", "sato", "silva", "brown",
         "kumar", "lopez", "wilson", "tanaka", "dubois", "jones", "rossi", "kim", "singh")
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me", "example.com")

# category, share of users for whom it is the favourite, median price (USD), log-sd, queries
# (the event simulation builds its product catalog and search queries from this table)
CATEGORIES: tuple[tuple[str, float, float, float, tuple[str, ...]], ...] = (
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


@lru_cache(maxsize=8)
def _population(app: AppParams, block: int) -> dict[str, np.ndarray]:
    """All per-user draws of one full block. Always drawn for ``BLOCK`` users (then cut)
    so user *i* is the same whatever the population size."""
    rng = np.random.default_rng([app.seed, POPULATION_STREAM, block])
    size = BLOCK
    z_act, z_prop, z_haz, z_price = rng.standard_normal((4, size))
    # Engaged users buy more and churn less: the correlations make past activity a
    # signal of both future purchases and survival, as in real apps.
    z_prop = 0.35 * z_act + math.sqrt(1 - 0.35**2) * z_prop
    z_haz = -0.40 * z_act + math.sqrt(1 - 0.40**2) * z_haz

    activity = np.clip(app.activity_median * np.exp(app.activity_sigma * z_act), 0.003, 6.0)
    logit_q = math.log(app.propensity_median / (1 - app.propensity_median))
    propensity = np.clip(sigmoid(logit_q + app.propensity_sigma * z_prop), 0.002, 0.5)
    checkout = 0.3 + 0.5 * np.sqrt(propensity)  # > propensity for propensity <= 0.5
    cart_lambda = -np.log1p(-propensity / checkout)  # carts/session giving P(>=1) right
    views = np.maximum(1.2 + rng.gamma(2.0, 0.6, size), cart_lambda / 0.9)
    cart_rate = cart_lambda / views
    search_rate = 0.15 + 0.5 * rng.random(size)
    price_level = np.exp(0.45 * z_price)
    cat_p = np.array([c[1] for c in CATEGORIES])
    favorite = rng.choice(len(CATEGORIES), size=size, p=cat_p / cat_p.sum())

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


def population_block(app: AppParams, block: int, n: int) -> dict[str, np.ndarray]:
    """The per-user draws of the first ``n`` users of ``block`` (cached per block)."""
    full = _population(app, block)
    return {k: v if k == "phone_shift" else v[:n] for k, v in full.items()}


def signup_times_us(end_us: int, signup_ago: np.ndarray) -> np.ndarray:
    """Signup timestamps (epoch microseconds) from days before ``end_us``."""
    return end_us - np.round(signup_ago * DAY_US).astype(np.int64)


def profiles_block(app: AppParams, block: int, n: int, end_us: int, width: int) -> pa.Table:
    """``PROFILE_SCHEMA`` rows of the first ``n`` users of ``block``."""
    p = population_block(app, block, n)
    ident = identities(block, n, width)
    gidx = np.arange(block * BLOCK, block * BLOCK + n, dtype=np.int64)
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
            "timezone": pa.array(TIMEZONES).take(p["tz"]),
            "country": pa.array([x[0] for x in _COUNTRIES]).take(c),
            "platform": pa.array(["android", "ios"]).take(p["ios"].astype(np.int8)),
            "signup_ts": pa.array(signup_times_us(end_us, p["signup_ago"]), type=TS),
            "email_opt_in": pa.array(p["email_in"]),
            "push_opt_in": pa.array(p["push_in"]),
            "sms_opt_in": pa.array(p["sms_in"]),
        },
        schema=PROFILE_SCHEMA,
    )


def traits_block(app: AppParams, block: int, n: int, width: int) -> pa.Table:
    """``TRAIT_SCHEMA`` rows of the first ``n`` users of ``block``."""
    p = population_block(app, block, n)
    cols = {
        "identity": identities(block, n, width),
        "activity_rate": p["activity"],
        "purchase_propensity": p["propensity"],
        "views_per_session": p["views"],
        "cart_rate": p["cart_rate"],
        "checkout_rate": p["checkout"],
        "search_rate": p["search_rate"],
        "price_level": p["price_level"],
        "favorite_category": pa.array([c[0] for c in CATEGORIES]).take(p["favorite"]),
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
