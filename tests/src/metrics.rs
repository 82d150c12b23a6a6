//! Reading the Prometheus text exposition format.

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses the text format; comment lines and lines that do not parse
    /// are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the series `name` whose labels include all of `labels`
    /// (summed if several match), or `None` if no series matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            let all = labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v));
            if all {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Like [`Metrics::get`], with an absent series read as 0 (a counter
    /// that has not been incremented yet may not be exported).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The lines mentioning `name`, for messages.
    pub fn lines_of(&self, name: &str) -> String {
        self.text
            .lines()
            .filter(|l| l.contains(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim().to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP swarmnet_gossip_dropped Dropped gossip datagrams.
# TYPE swarmnet_gossip_dropped counter
swarmnet_gossip_dropped_total{reason="auth"} 3
swarmnet_gossip_dropped_total{reason="replay"} 1
swarmnet_underlay_rx_packets_total{proto="icmp",iface="eth0"} 12
swarmnet_underlay_rx_packets_total{proto="udp",iface="eth0"} 40
weird_label{v="a,b=\"c\""} 2.5
plain 7 1700000000000
# EOF
"#;

    #[test]
    fn reads_series_by_labels() {
        let m = Metrics::parse(PAGE);
        assert_eq!(
            m.get("swarmnet_gossip_dropped_total", &[("reason", "auth")]),
            Some(3.0)
        );
        assert_eq!(
            m.counter("swarmnet_gossip_dropped_total", &[("reason", "malformed")]),
            0.0
        );
        assert_eq!(
            m.get("swarmnet_underlay_rx_packets_total", &[("proto", "icmp")]),
            Some(12.0)
        );
        assert_eq!(m.get("swarmnet_underlay_rx_packets_total", &[]), Some(52.0));
        assert_eq!(m.get("weird_label", &[("v", "a,b=\"c\"")]), Some(2.5));
        assert_eq!(m.get("plain", &[]), Some(7.0));
    }
}
