#!/usr/bin/env python3
"""Realistic card-payment history with labelled fraud, for the demo and the benchmarks.

Customers live in cities, have their own spending levels, daily rhythms, devices and
favourite merchants; most payments are ordinary. Injected fraud follows the patterns
payment teams see: card testing, account takeover, impossible travel, a compromised
terminal, a stolen-card spree, night-time anomalies and amount spikes. Deterministic for a
seed; standard library only.

    generate.py history --customers 3000 --days 30 > history.csv     (COPY-ready CSV)
    generate.py stream --seconds 60 --rate 20 --dsn ...              (live inserts)

CSV columns: card_token, amount_cents, currency, authorized_at, terminal_id,
merchant_category, device_fingerprint, client_ip, ip_country, geo_lat, geo_lon, ship_lat,
ship_lon, entry_mode, fraud_pattern (empty for genuine rows).
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

CITIES = [
    ("Paris", "FR", 48.857, 2.352), ("Lyon", "FR", 45.764, 4.836), ("Marseille", "FR", 43.296, 5.370),
    ("Berlin", "DE", 52.520, 13.405), ("Munich", "DE", 48.137, 11.576), ("Hamburg", "DE", 53.551, 9.994),
    ("Madrid", "ES", 40.417, -3.704), ("Barcelona", "ES", 41.385, 2.173), ("Rome", "IT", 41.903, 12.496),
    ("Milan", "IT", 45.464, 9.190), ("Amsterdam", "NL", 52.368, 4.904), ("Brussels", "BE", 50.850, 4.352),
    ("Lisbon", "PT", 38.722, -9.139), ("Vienna", "AT", 48.208, 16.374), ("Zurich", "CH", 47.377, 8.541),
    ("London", "GB", 51.507, -0.128), ("Dublin", "IE", 53.350, -6.260), ("Warsaw", "PL", 52.230, 21.012),
    ("Stockholm", "SE", 59.329, 18.069), ("Copenhagen", "DK", 55.676, 12.568),
]
FAR_AWAY = [
    ("Lagos", "NG", 6.524, 3.379), ("Sao Paulo", "BR", -23.551, -46.633), ("Jakarta", "ID", -6.208, 106.846),
    ("Manila", "PH", 14.600, 120.984), ("Moscow", "RU", 55.756, 37.617), ("Bangkok", "TH", 13.756, 100.502),
    ("Mexico City", "MX", 19.433, -99.133), ("Hanoi", "VN", 21.028, 105.834),
]
CATEGORIES = ["grocery", "restaurant", "fuel", "pharmacy", "clothing", "electronics", "travel", "digital", "marketplace"]


@dataclass
class Merchant:
    terminal_id: str
    category: str
    online: bool
    lat: float | None
    lon: float | None
    country: str
    typical: float  # typical ticket in euros


@dataclass
class Customer:
    card: str
    city: tuple
    mu: float            # log-mean of amounts (euros)
    sigma: float
    per_day: float
    peak_hour: float     # centre of the daily rhythm (local ~ UTC here)
    spread: float
    devices: list[str]
    ip: str
    card_present_share: float
    favourites: list[Merchant] = field(default_factory=list)
    online: list[Merchant] = field(default_factory=list)


def jitter(rng, lat, lon, km=8.0):
    d = km / 111.0
    return lat + rng.uniform(-d, d), lon + rng.uniform(-d, d)


class World:
    def __init__(self, customers: int, seed: int):
        self.rng = rng = random.Random(seed)
        self.merchants: list[Merchant] = []
        for i, city in enumerate(CITIES):
            for k in range(3):  # three physical terminals per city
                cat = CATEGORIES[(i + k) % 6]
                lat, lon = jitter(rng, city[2], city[3], 5)
                self.merchants.append(Merchant(f"T{city[1]}{i:02d}{k}", cat, False, lat, lon, city[1], rng.uniform(8, 80)))
        for k in range(12):  # online shops
            cat = CATEGORIES[6 + k % 3]
            self.merchants.append(Merchant(f"W{k:03d}", cat, True, None, None, "", rng.uniform(15, 120)))
        self.by_city = {c[0]: [m for m in self.merchants if not m.online and m.terminal_id[1:3] == c[1]
                               and m.terminal_id[3:5] == f"{CITIES.index(c):02d}"] for c in CITIES}
        self.online = [m for m in self.merchants if m.online]
        self.compromised = self.by_city["Madrid"][0]  # the skimmed terminal
        self.customers: list[Customer] = []
        for n in range(customers):
            city = rng.choice(CITIES)
            c = Customer(
                card=f"card_{n:06d}",
                city=city,
                mu=rng.gauss(3.2, 0.6),
                sigma=rng.uniform(0.3, 0.7),
                per_day=rng.choice([0.3, 0.6, 1, 1.5, 2, 3]),
                peak_hour=rng.choice([9, 12, 13, 17, 19, 20]) + rng.uniform(-1, 1),
                spread=rng.uniform(1.5, 3.0),
                devices=[f"dev_{n:06d}_{d}" for d in range(rng.choice([1, 1, 2]))],
                ip=f"10.{n // 250 % 250}.{n % 250}.{rng.randint(2, 250)}",
                card_present_share=rng.uniform(0.4, 0.9),
            )
            local = self.by_city[city[0]]
            c.favourites = rng.sample(local, k=len(local))
            c.online = rng.sample(self.online, k=3)
            self.customers.append(c)

    def genuine(self, c: Customer, t: datetime) -> dict:
        rng = self.rng
        present = rng.random() < c.card_present_share
        amount = max(0.5, math.exp(rng.gauss(c.mu, c.sigma)))
        if present:
            m = rng.choice(c.favourites[:2] if rng.random() < 0.8 else c.favourites)
            lat, lon = jitter(rng, m.lat, m.lon, 0.5)
            return row(c.card, amount, t, m, None, None, c.city[1], lat, lon, None, None, rng.choice(["chip", "contactless"]))
        m = rng.choice(c.online)
        lat, lon = jitter(rng, c.city[2], c.city[3], 3)
        return row(c.card, amount, t, m, rng.choice(c.devices), c.ip, c.city[1], lat, lon, lat, lon, "ecom")

    def daily_times(self, c: Customer, day: datetime) -> list[datetime]:
        rng = self.rng
        n = sum(1 for _ in range(6) if rng.random() < c.per_day / 6)
        out = []
        for _ in range(n):
            h = min(23.99, max(0.0, rng.gauss(c.peak_hour, c.spread)))
            out.append(day + timedelta(hours=h))
        return out

    # ---- fraud patterns: each returns rows (dicts) with fraud_pattern set ----

    def card_testing(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        m = rng.choice(self.online)
        city = rng.choice(FAR_AWAY)
        dev, ip = f"dev_bot_{rng.randint(0, 40)}", f"203.0.113.{rng.randint(1, 254)}"
        rows, at = [], t
        for _ in range(rng.randint(6, 14)):
            at += timedelta(seconds=rng.randint(5, 50))
            rows.append(row(c.card, rng.uniform(0.5, 2.5), at, m, dev, ip, city[1], city[2], city[3], None, None, "ecom", "card_testing"))
        return rows

    def account_takeover(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        city = rng.choice(FAR_AWAY)
        m = rng.choice([x for x in self.online if x.category in ("electronics", "marketplace", "digital", "travel")] or self.online)
        amount = math.exp(c.mu) * rng.uniform(6, 20)
        lat, lon = jitter(rng, city[2], city[3], 10)
        ship = jitter(rng, city[2], city[3], 10)
        return [row(c.card, amount, t, m, f"dev_ato_{rng.randint(0, 10**6)}", f"198.51.100.{rng.randint(1, 254)}", city[1],
                    lat, lon, ship[0], ship[1], "ecom", "account_takeover")]

    def impossible_travel(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        home_m = c.favourites[0]
        far_city = rng.choice([x for x in CITIES if abs(x[2] - c.city[2]) + abs(x[3] - c.city[3]) > 12] or FAR_AWAY)
        far_m = self.by_city.get(far_city[0], [self.compromised])[0]
        amount = math.exp(rng.gauss(c.mu, c.sigma)) * rng.uniform(1.5, 4)
        a = row(c.card, math.exp(rng.gauss(c.mu, c.sigma)), t, home_m, None, None, c.city[1], home_m.lat, home_m.lon, None, None, "chip")
        b = row(c.card, amount, t + timedelta(minutes=rng.randint(8, 40)), far_m, None, None, far_city[1], far_m.lat, far_m.lon,
                None, None, "swipe", "impossible_travel")
        return [a, b]

    def compromised_terminal(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        m = self.compromised
        amount = m.typical * rng.uniform(4, 12)
        return [row(c.card, amount, t, m, None, None, m.country, m.lat, m.lon, None, None, "swipe", "compromised_terminal")]

    def spree(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        city = rng.choice(CITIES)
        rows, at = [], t
        for m in rng.sample(self.by_city[city[0]] + self.online, k=rng.randint(5, 8)):
            at += timedelta(minutes=rng.randint(2, 9))
            amount = math.exp(c.mu) * rng.uniform(4, 12)
            if m.online:
                rows.append(row(c.card, amount, at, m, f"dev_thief_{c.card}", f"192.0.2.{rng.randint(1, 254)}", city[1],
                                city[2], city[3], city[2], city[3], "ecom", "stolen_card_spree"))
            else:
                rows.append(row(c.card, amount, at, m, None, None, city[1], m.lat, m.lon, None, None, "contactless", "stolen_card_spree"))
        return rows

    def night(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        night = t.replace(hour=int((c.peak_hour + 12) % 24), minute=rng.randint(0, 59))
        m = rng.choice(self.online)
        amount = math.exp(c.mu) * rng.uniform(3, 8)
        return [row(c.card, amount, night, m, f"dev_night_{rng.randint(0, 10**6)}", f"198.18.0.{rng.randint(1, 254)}",
                    c.city[1], c.city[2], c.city[3], c.city[2], c.city[3], "ecom", "night_time")]

    def spike(self, c: Customer, t: datetime) -> list[dict]:
        rng = self.rng
        m = c.favourites[0]
        amount = math.exp(c.mu + c.sigma * rng.uniform(6, 10))
        return [row(c.card, amount, t, m, None, None, c.city[1], m.lat, m.lon, None, None, "chip", "amount_spike")]

    PATTERNS = ["card_testing", "account_takeover", "impossible_travel", "compromised_terminal", "spree", "night", "spike"]

    def fraud(self, c: Customer, t: datetime, pattern: str | None = None) -> list[dict]:
        pattern = pattern or self.rng.choice(self.PATTERNS)
        return getattr(self, pattern)(c, t)


def row(card, amount, t, m, device, ip, country, lat, lon, ship_lat, ship_lon, mode, pattern=""):
    return {
        "card_token": card, "amount_cents": int(round(amount * 100)), "currency": "EUR",
        "authorized_at": t.isoformat(), "terminal_id": m.terminal_id, "merchant_category": m.category,
        "device_fingerprint": device, "client_ip": ip, "ip_country": country,
        "geo_lat": None if lat is None else round(lat, 5), "geo_lon": None if lon is None else round(lon, 5),
        "ship_lat": None if ship_lat is None else round(ship_lat, 5), "ship_lon": None if ship_lon is None else round(ship_lon, 5),
        "entry_mode": mode, "fraud_pattern": pattern,
    }


COLUMNS = ["card_token", "amount_cents", "currency", "authorized_at", "terminal_id", "merchant_category",
           "device_fingerprint", "client_ip", "ip_country", "geo_lat", "geo_lon", "ship_lat", "ship_lon", "entry_mode",
           "fraud_pattern"]


def history(world: World, days: int, fraud_rate: float, end: datetime) -> list[dict]:
    rng = world.rng
    start = (end - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = []
    for c in world.customers:
        for d in range(days):
            day = start + timedelta(days=d)
            for t in world.daily_times(c, day):
                if t < end:
                    rows.append(world.genuine(c, t))
    n_fraud_events = int(len(rows) * fraud_rate / 2.5)
    for _ in range(n_fraud_events):
        c = rng.choice(world.customers)
        # fraud happens after the customer has some history
        t = start + timedelta(days=rng.uniform(days * 0.3, days), hours=0)
        rows.extend(r for r in world.fraud(c, t) if r["authorized_at"] < end.isoformat())
    rows.sort(key=lambda r: r["authorized_at"])
    return rows


def write_csv(rows, out):
    w = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def stream(world: World, seconds: float, rate: float, fraud_rate: float, dsn: str, table: str, quiet: bool):
    import psycopg  # only the streamer needs a database driver

    rng = world.rng
    cols = [c for c in COLUMNS if c != "fraud_pattern"]
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) RETURNING payment_id"
    truth = "INSERT INTO demo.truth (payment_id, fraud_pattern) VALUES (%s, %s)"
    sent = frauds = 0
    deadline = time.time() + seconds
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.time() < deadline:
            c = rng.choice(world.customers)
            now = datetime.now(timezone.utc)
            batch = world.fraud(c, now) if rng.random() < fraud_rate else [world.genuine(c, now)]
            if batch[0]["fraud_pattern"]:
                frauds += 1
            for r in batch:
                # Live rows happen now: a pattern's minutes-apart steps (a spree, a second city)
                # are compressed onto the wall clock, so the demo shows them within seconds.
                r["authorized_at"] = datetime.now(timezone.utc).isoformat()
                pid = conn.execute(sql, [r[k] for k in cols]).fetchone()[0]
                if r["fraud_pattern"]:
                    conn.execute(truth, (pid, r["fraud_pattern"]))
                sent += 1
                time.sleep(1.0 / rate)
    if not quiet:
        print(f"streamed {sent} payments ({frauds} fraud episodes)", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("history", help="write CSV history to stdout")
    h.add_argument("--customers", type=int, default=3000)
    h.add_argument("--days", type=int, default=30)
    h.add_argument("--fraud-rate", type=float, default=0.01)
    h.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("stream", help="insert live payments")
    s.add_argument("--customers", type=int, default=3000)
    s.add_argument("--seconds", type=float, default=60)
    s.add_argument("--rate", type=float, default=20)
    s.add_argument("--fraud-rate", type=float, default=0.04)
    s.add_argument("--seed", type=int, help="default: a new one each run")
    s.add_argument("--dsn", required=True)
    s.add_argument("--table", default="shop.card_payments")
    s.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    if a.cmd == "history":
        world = World(a.customers, a.seed)
        write_csv(history(world, a.days, a.fraud_rate, datetime.now(timezone.utc)), sys.stdout)
    else:
        # The same customers as the history (its default seed), then live choices of our own.
        world = World(a.customers, 7)
        world.rng.seed(a.seed if a.seed is not None else int(time.time()))
        stream(world, a.seconds, a.rate, a.fraud_rate, a.dsn, a.table, a.quiet)


if __name__ == "__main__":
    main()
