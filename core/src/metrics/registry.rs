//! The registry: metrics registered by name (counters, gauges, histograms with labels) and
//! collectors called at every scrape, gathered into sorted families. In memory; no I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::family::{owned_labels, valid_metric_name, Family, Kind, Labels};
use super::handles::{Counter, Gauge, Histogram};
use super::text::render;

enum Series {
    Counter(BTreeMap<Labels, Counter>),
    Gauge(BTreeMap<Labels, Gauge>),
    Histogram(Vec<f64>, BTreeMap<Labels, Histogram>),
}

struct Registered {
    help: String,
    series: Series,
}

type Collector = Box<dyn Fn() -> Vec<Family> + Send + Sync>;

/// A set of metrics and collectors, rendered together on every scrape.
#[derive(Default)]
pub struct Registry {
    metrics: Mutex<BTreeMap<String, Registered>>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("metrics", &lock(&self.metrics).keys().collect::<Vec<_>>())
            .field("collectors", &lock(&self.collectors).len())
            .finish()
    }
}

use crate::bytes::lock;

/// The process-wide registry that `tandem node` serves on its `metrics_listen` address.
pub fn global() -> &'static Arc<Registry> {
    static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Registry::new()))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The counter `name{labels}`, created on first use.
    ///
    /// # Panics
    /// If `name` or a label name is invalid, or `name` is already registered with another
    /// type: metric names are code, so this is a programming error.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let mut m = self.entry(name, help, || Series::Counter(BTreeMap::new()));
        match m.get_mut(name).map(|r| &mut r.series) {
            Some(Series::Counter(s)) => s.entry(owned_labels(labels)).or_default().clone(),
            _ => panic!("metric {name} is registered with another type"),
        }
    }

    /// The gauge `name{labels}`, created on first use.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let mut m = self.entry(name, help, || Series::Gauge(BTreeMap::new()));
        match m.get_mut(name).map(|r| &mut r.series) {
            Some(Series::Gauge(s)) => s.entry(owned_labels(labels)).or_default().clone(),
            _ => panic!("metric {name} is registered with another type"),
        }
    }

    /// The histogram `name{labels}` with upper bounds `bounds` (seconds, bytes, ...), created on
    /// first use; every series of one name shares the bounds given first.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        bounds: &[f64],
        labels: &[(&str, &str)],
    ) -> Histogram {
        let mut m = self.entry(name, help, || {
            Series::Histogram(bounds.to_vec(), BTreeMap::new())
        });
        match m.get_mut(name).map(|r| &mut r.series) {
            Some(Series::Histogram(b, s)) => s
                .entry(owned_labels(labels))
                .or_insert_with(|| Histogram::new(b))
                .clone(),
            _ => panic!("metric {name} is registered with another type"),
        }
    }

    fn entry(
        &self,
        name: &str,
        help: &str,
        make: impl FnOnce() -> Series,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, Registered>> {
        assert!(valid_metric_name(name), "invalid metric name {name:?}");
        let mut m = lock(&self.metrics);
        m.entry(name.to_owned()).or_insert_with(|| Registered {
            help: help.to_owned(),
            series: make(),
        });
        m
    }

    /// Adds a closure called at every scrape; the families it returns are rendered with the
    /// registered ones. It must be quick and must not block (it runs on the server's task).
    pub fn register_collector(&self, f: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
        lock(&self.collectors).push(Box::new(f));
    }

    /// Every family now: registered handles, then collectors' output; families of the same name
    /// are merged (first help and type win; a collector family whose type differs from a
    /// registered one is dropped), empty ones are left out, and the result is sorted by name.
    pub fn gather(&self) -> Vec<Family> {
        let mut out: BTreeMap<String, Family> = BTreeMap::new();
        for (name, r) in lock(&self.metrics).iter() {
            let kind = match r.series {
                Series::Counter(_) => Kind::Counter,
                Series::Gauge(_) => Kind::Gauge,
                Series::Histogram(..) => Kind::Histogram,
            };
            let mut f = Family::new(name, &r.help, kind);
            match &r.series {
                Series::Counter(s) => {
                    for (l, c) in s {
                        f.push_series(name, l.clone(), c.get() as f64);
                    }
                }
                Series::Gauge(s) => {
                    for (l, g) in s {
                        f.push_series(name, l.clone(), g.get());
                    }
                }
                Series::Histogram(_, s) => {
                    for (l, h) in s {
                        h.push_into(&mut f, l);
                    }
                }
            }
            out.insert(name.clone(), f);
        }
        let collected: Vec<Family> = lock(&self.collectors).iter().flat_map(|c| c()).collect();
        for f in collected {
            match out.get_mut(&f.name) {
                Some(existing) if existing.kind == f.kind => existing.samples.extend(f.samples),
                Some(_) => {}
                None => {
                    out.insert(f.name.clone(), f);
                }
            }
        }
        // A family with no series (a handle-less name, a collector with nothing to report yet)
        // would only be a HELP/TYPE pair: leave it out.
        out.into_values()
            .filter(|f| !f.samples.is_empty())
            .collect()
    }

    /// The text exposition of [`Registry::gather`].
    pub fn render(&self) -> String {
        render(&self.gather())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::metrics::text::parse_text;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn registry_renders_counters_gauges_and_cumulative_histogram_buckets() {
        let r = Registry::new();
        r.counter("c_total", "c", &[("k", "a")]).add(3);
        r.counter("c_total", "c", &[("k", "a")]).inc();
        r.gauge("g", "g", &[]).set(-2.5);
        let h = r.histogram("h_seconds", "h", &[0.1, 1.0], &[]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        let exp = parse_text(&r.render()).unwrap();
        assert_eq!(exp.value("c_total", &[("k", "a")]), Some(4.0));
        assert_eq!(exp.value("g", &[]), Some(-2.5));
        assert_eq!(exp.value("h_seconds_bucket", &[("le", "0.1")]), Some(1.0));
        assert_eq!(exp.value("h_seconds_bucket", &[("le", "1")]), Some(3.0));
        assert_eq!(exp.value("h_seconds_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(exp.value("h_seconds_count", &[]), Some(4.0));
        assert_eq!(exp.value("h_seconds_sum", &[]), Some(8.05));
        assert_eq!(exp.types.get("h_seconds"), Some(&Kind::Histogram));
        assert_eq!(exp.types.get("c_total"), Some(&Kind::Counter));
    }

    #[test]
    fn collectors_are_called_at_every_scrape_and_merged_by_name() {
        let r = Registry::new();
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        r.register_collector(move || {
            let v = n2.fetch_add(1, Ordering::SeqCst) as f64;
            vec![Family::new("live", "live", Kind::Gauge).with(&[("g", "x")], v)]
        });
        r.register_collector(|| {
            vec![Family::new("live", "live", Kind::Gauge).with(&[("g", "y")], 9.0)]
        });
        assert_eq!(
            parse_text(&r.render())
                .unwrap()
                .value("live", &[("g", "x")]),
            Some(0.0)
        );
        let exp = parse_text(&r.render()).unwrap();
        assert_eq!(exp.value("live", &[("g", "x")]), Some(1.0));
        assert_eq!(exp.value("live", &[("g", "y")]), Some(9.0));
        assert_eq!(r.render().matches("# TYPE live").count(), 1);
    }

    #[test]
    fn families_without_series_are_not_rendered() {
        let r = Registry::new();
        r.register_collector(|| vec![Family::new("nothing_yet", "n", Kind::Gauge)]);
        assert_eq!(r.render(), "");
    }

    #[test]
    #[should_panic(expected = "another type")]
    fn registering_a_name_with_two_types_is_a_programming_error() {
        let r = Registry::new();
        r.counter("x", "x", &[]);
        r.gauge("x", "x", &[]);
    }
}
