//! What a scrape returns: metric families (name, help, type) and their samples, with the name
//! rules of the exposition format. Plain data; no I/O.

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (resets when the process restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with sum and count.
    Histogram,
    /// A family of unknown type (only met when parsing).
    Untyped,
}

impl Kind {
    /// The word on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Untyped => "untyped",
        }
    }
}

/// Label pairs of one series, in the order they are written.
pub type Labels = Vec<(String, String)>;

/// One line of the exposition: a series name (the family name, or `_bucket`/`_sum`/`_count` of a
/// histogram), its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name.
    pub name: String,
    /// Label pairs.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A metric family: name, help text, type and samples, rendered as one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Family name (`tandem_group_rpo_seconds`).
    pub name: String,
    /// One line of help.
    pub help: String,
    /// Type.
    pub kind: Kind,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    ///
    /// # Panics
    /// If `name` is not a valid metric name: names are code, not input.
    pub fn new(name: &str, help: &str, kind: Kind) -> Family {
        assert!(valid_metric_name(name), "invalid metric name {name:?}");
        Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample of the family's own name.
    ///
    /// # Panics
    /// If a label name is invalid (label names are code; label values may be anything).
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let name = self.name.clone();
        self.push_series(&name, owned_labels(labels), value);
    }

    /// Builder form of [`Family::push`].
    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push(labels, value);
        self
    }

    pub(super) fn push_series(&mut self, name: &str, labels: Labels, value: f64) {
        self.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
}

pub(super) fn owned_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| {
            assert!(valid_label_name(k), "invalid label name {k:?}");
            ((*k).to_owned(), (*v).to_owned())
        })
        .collect()
}

/// True for `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// True for `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
