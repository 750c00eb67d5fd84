//! Geography: validated coordinates, great-circle distance, implied speed, and a
//! time-decayed "home" location.

use serde::{Deserialize, Serialize};

use crate::decay::decay_factor;

/// Mean Earth radius (IUGG), in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Implied speeds are computed over at least this many seconds: timestamps from different
/// systems disagree by seconds, and two taps a second apart at one terminal must not read
/// as supersonic.
pub const MIN_TRAVEL_SECONDS: f64 = 60.0;

/// Speeds are capped here so a feature value is always finite (faster than any airliner
/// by two orders of magnitude: "impossible" either way).
pub const MAX_SPEED_KMH: f64 = 100_000.0;

/// Half-life of a location's weight in the home estimate: a customer who moves is "home"
/// in the new city after a few months of transactions there.
pub const HOME_HALF_LIFE_DAYS: f64 = 90.0;

/// A point on Earth in degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatLon {
    /// Latitude in degrees, −90..=90.
    pub lat: f64,
    /// Longitude in degrees, −180..=180.
    pub lon: f64,
}

impl LatLon {
    /// A validated point: `None` unless both values are finite and within range.
    pub fn new(lat: f64, lon: f64) -> Option<LatLon> {
        let ok = lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0;
        ok.then_some(LatLon { lat, lon })
    }

    fn to_unit(self) -> [f64; 3] {
        let (phi, lambda) = (self.lat.to_radians(), self.lon.to_radians());
        [phi.cos() * lambda.cos(), phi.cos() * lambda.sin(), phi.sin()]
    }
}

/// Great-circle distance in kilometres (haversine; accurate to ~0.5% anywhere on Earth).
pub fn haversine_km(a: LatLon, b: LatLon) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    // min(1) guards asin against rounding just above 1 for antipodal points.
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Speed needed to cover `km` in `seconds`, in km/h, over at least [`MIN_TRAVEL_SECONDS`]
/// and capped at [`MAX_SPEED_KMH`]. Out-of-order events (negative time) use the absolute gap.
pub fn speed_kmh(km: f64, seconds: f64) -> Option<f64> {
    if !(km.is_finite() && seconds.is_finite()) || km < 0.0 {
        return None;
    }
    let hours = seconds.abs().max(MIN_TRAVEL_SECONDS) / 3600.0;
    Some((km / hours).min(MAX_SPEED_KMH))
}

/// A time-decayed mean location: the centroid of past locations on the unit sphere, each
/// weighted by `0.5^(age / half-life)`. Mergeable: partial centroids kept by different
/// writers combine exactly, in any order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HomeCentroid {
    /// Weighted sum of unit vectors, valued at `t_ref_us`.
    sum: [f64; 3],
    /// Sum of weights, valued at `t_ref_us`.
    weight: f64,
    /// The instant (µs since the Unix epoch) the sums are expressed at.
    t_ref_us: i64,
}

impl HomeCentroid {
    fn rebase(&mut self, t_us: i64) {
        if self.weight == 0.0 {
            self.t_ref_us = t_us;
            return;
        }
        if t_us > self.t_ref_us {
            let f = decay_factor(t_us - self.t_ref_us, HOME_HALF_LIFE_DAYS);
            self.sum.iter_mut().for_each(|s| *s *= f);
            self.weight *= f;
            self.t_ref_us = t_us;
        }
    }

    /// Records a location seen at `t_us`.
    pub fn push(&mut self, p: LatLon, t_us: i64) {
        self.rebase(t_us);
        // An event older than the reference time counts with its decayed weight.
        let w = if t_us < self.t_ref_us { decay_factor(self.t_ref_us - t_us, HOME_HALF_LIFE_DAYS) } else { 1.0 };
        let u = p.to_unit();
        for (s, c) in self.sum.iter_mut().zip(u) {
            *s += w * c;
        }
        self.weight += w;
    }

    /// Combines two centroids as if one had seen both streams.
    pub fn merge(&mut self, other: &HomeCentroid) {
        if other.weight == 0.0 {
            return;
        }
        let mut o = *other;
        let t = self.t_ref_us.max(o.t_ref_us);
        self.rebase(t);
        o.rebase(t);
        for (s, c) in self.sum.iter_mut().zip(o.sum) {
            *s += c;
        }
        self.weight += o.weight;
    }

    /// The home location, or `None` without history or when past locations cancel out
    /// (e.g. exactly antipodal), in which case no direction is meaningful.
    pub fn center(&self) -> Option<LatLon> {
        if self.weight <= 0.0 {
            return None;
        }
        let [x, y, z] = self.sum;
        let norm = (x * x + y * y + z * z).sqrt();
        if norm < 1e-9 * self.weight {
            return None;
        }
        let lat = (z / norm).clamp(-1.0, 1.0).asin().to_degrees();
        let lon = y.atan2(x).to_degrees();
        LatLon::new(lat, lon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 86_400_000_000;

    fn p(lat: f64, lon: f64) -> LatLon {
        LatLon::new(lat, lon).unwrap()
    }

    #[test]
    fn validation() {
        assert!(LatLon::new(90.0, 180.0).is_some());
        assert!(LatLon::new(-90.0, -180.0).is_some());
        assert!(LatLon::new(90.0001, 0.0).is_none());
        assert!(LatLon::new(0.0, 180.5).is_none());
        assert!(LatLon::new(f64::NAN, 0.0).is_none());
        assert!(LatLon::new(0.0, f64::INFINITY).is_none());
        assert!(LatLon::new(f64::NEG_INFINITY, 0.0).is_none());
        assert!(LatLon::new(1e300, 0.0).is_none());
    }

    #[test]
    fn known_distances() {
        // Paris - London ≈ 343.5 km, New York - Los Angeles ≈ 3936 km
        let d = haversine_km(p(48.8566, 2.3522), p(51.5074, -0.1278));
        assert!((d - 343.5).abs() < 2.0, "{d}");
        let d = haversine_km(p(40.7128, -74.0060), p(34.0522, -118.2437));
        assert!((d - 3936.0).abs() < 10.0, "{d}");
        assert_eq!(haversine_km(p(10.0, 10.0), p(10.0, 10.0)), 0.0);
        // antipodes: half the circumference, no NaN
        let d = haversine_km(p(0.0, 0.0), p(0.0, 180.0));
        assert!((d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6, "{d}");
        // across the date line is short
        assert!(haversine_km(p(0.0, 179.9), p(0.0, -179.9)) < 25.0);
    }

    #[test]
    fn speed() {
        assert_eq!(speed_kmh(100.0, 3600.0), Some(100.0));
        // 1 km in 1 s is computed over the 60 s floor
        assert_eq!(speed_kmh(1.0, 1.0), Some(60.0));
        assert_eq!(speed_kmh(1.0, 0.0), Some(60.0));
        assert_eq!(speed_kmh(100.0, -3600.0), Some(100.0));
        assert_eq!(speed_kmh(1e9, 60.0), Some(MAX_SPEED_KMH));
        assert_eq!(speed_kmh(f64::NAN, 60.0), None);
        assert_eq!(speed_kmh(1.0, f64::INFINITY), None);
        assert_eq!(speed_kmh(-1.0, 60.0), None);
    }

    #[test]
    fn home_is_where_most_recent_weight_is() {
        let mut h = HomeCentroid::default();
        assert_eq!(h.center(), None);
        for i in 0..20 {
            h.push(p(48.85, 2.35), i * DAY_US);
        }
        let c = h.center().unwrap();
        assert!(haversine_km(c, p(48.85, 2.35)) < 0.01);
        // a year later, after months in Berlin, home has moved to Berlin
        for i in 0..60 {
            h.push(p(52.52, 13.40), 365 * DAY_US + i * 2 * DAY_US);
        }
        let c = h.center().unwrap();
        assert!(haversine_km(c, p(52.52, 13.40)) < 50.0, "{c:?}");
    }

    #[test]
    fn home_merge_is_order_independent() {
        let pts = [
            (p(10.0, 20.0), 0),
            (p(11.0, 21.0), 5 * DAY_US),
            (p(-33.9, 151.2), 9 * DAY_US),
            (p(10.5, 20.5), 30 * DAY_US),
        ];
        let mut all = HomeCentroid::default();
        let (mut a, mut b) = (HomeCentroid::default(), HomeCentroid::default());
        for (i, (pt, t)) in pts.iter().enumerate() {
            all.push(*pt, *t);
            if i % 2 == 0 {
                a.push(*pt, *t)
            } else {
                b.push(*pt, *t)
            }
        }
        let mut ab = a;
        ab.merge(&b);
        let mut ba = b;
        ba.merge(&a);
        let (c1, c2, c3) = (ab.center().unwrap(), ba.center().unwrap(), all.center().unwrap());
        assert!(haversine_km(c1, c2) < 1e-6);
        assert!(haversine_km(c1, c3) < 1e-6);
    }

    #[test]
    fn antipodal_history_has_no_home() {
        let mut h = HomeCentroid::default();
        h.push(p(0.0, 0.0), 0);
        h.push(p(0.0, 180.0), 0);
        assert_eq!(h.center(), None);
    }
}
