//! A `metrics` recorder that keeps every value in memory and writes them as Prometheus text: for
//! tests of the pool's metrics and for the metrics example. A production service installs a
//! real exporter (`metrics-exporter-prometheus`, …) instead; the pool's metrics are the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Counts and sums of one histogram.
#[derive(Debug, Default)]
struct Summary(Mutex<(u64, f64)>);

impl HistogramFn for Summary {
    fn record(&self, value: f64) {
        if let Ok(mut s) = self.0.lock() {
            s.0 += 1;
            s.1 += value;
        }
    }
}

#[derive(Debug, Clone)]
enum Cell {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Summary>),
}

/// The in-memory recorder (see the module docs).
///
/// ```no_run
/// let metrics = actor_orm::testing::MetricsRecorder::install().expect("the only recorder");
/// // … build pools and use them …
/// println!("{}", metrics.render());
/// ```
#[derive(Debug, Default)]
pub struct MetricsRecorder {
    cells: Mutex<BTreeMap<String, Cell>>,
}

static INSTALLED: OnceLock<&'static MetricsRecorder> = OnceLock::new();

/// `name{label="value",…}`, labels in order.
fn series(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value().replace('"', "\\\"")))
        .collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl MetricsRecorder {
    /// Installs the process's recorder (once; later calls return the same one). `None` when
    /// another recorder was installed first.
    pub fn install() -> Option<&'static MetricsRecorder> {
        if let Some(r) = INSTALLED.get() {
            return Some(r);
        }
        let recorder: &'static MetricsRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).ok()?;
        Some(*INSTALLED.get_or_init(|| recorder))
    }

    fn cell(&self, key: &Key, make: impl FnOnce() -> Cell) -> Cell {
        let mut cells = self
            .cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cells.entry(series(key)).or_insert_with(make).clone()
    }

    /// The value of series `series` (`name{label="value",…}` as [`render`](Self::render)
    /// writes it): a counter's count, a gauge's value, a histogram's number of observations.
    pub fn value(&self, series: &str) -> Option<f64> {
        let cells = self.cells.lock().ok()?;
        #[allow(clippy::cast_precision_loss)]
        Some(match cells.get(series)? {
            Cell::Counter(c) => c.load(Ordering::Relaxed) as f64,
            Cell::Gauge(g) => f64::from_bits(g.load(Ordering::Relaxed)),
            Cell::Histogram(h) => h.0.lock().ok()?.0 as f64,
        })
    }

    /// Every series in Prometheus's text format (histograms as `_count` and `_sum`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(cells) = self.cells.lock() else {
            return out;
        };
        for (series, cell) in cells.iter() {
            match cell {
                Cell::Counter(c) => {
                    let _ = writeln!(out, "{series} {}", c.load(Ordering::Relaxed));
                }
                Cell::Gauge(g) => {
                    let _ = writeln!(
                        out,
                        "{series} {}",
                        f64::from_bits(g.load(Ordering::Relaxed))
                    );
                }
                Cell::Histogram(h) => {
                    let (count, sum) = h.0.lock().map(|s| *s).unwrap_or_default();
                    let (name, labels) = series
                        .split_once('{')
                        .map_or((series.as_str(), String::new()), |(n, l)| {
                            (n, format!("{{{l}"))
                        });
                    let _ = writeln!(out, "{name}_count{labels} {count}");
                    let _ = writeln!(out, "{name}_sum{labels} {sum}");
                }
            }
        }
        out
    }
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.cell(key, || Cell::Counter(Arc::default())) {
            Cell::Counter(c) => Counter::from_arc(c),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match self.cell(key, || Cell::Gauge(Arc::default())) {
            Cell::Gauge(g) => Gauge::from_arc(g),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.cell(key, || Cell::Histogram(Arc::default())) {
            Cell::Histogram(h) => Histogram::from_arc(h),
            _ => Histogram::noop(),
        }
    }
}
