//! The standard `process_*` metrics, with CPU time to the clock tick: the prometheus crate's
//! collector counts `process_cpu_seconds_total` in whole seconds (an integer division of clock
//! ticks), which a mostly idle operator's `rate(...[5m])` reads as 0 or as 1-second steps.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{Counter, MetricFamily};

pub const CPU_SECONDS: &str = "process_cpu_seconds_total";

pub struct ProcessMetrics(ProcessCollector);

impl ProcessMetrics {
    pub fn for_self() -> Self {
        ProcessMetrics(ProcessCollector::for_self())
    }
}

/// User and system CPU time of this process, in seconds, to the clock tick.
pub fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        if let Some(seconds) = cpu_seconds() {
            for family in families.iter_mut().filter(|f| f.name() == CPU_SECONDS) {
                for metric in family.mut_metric() {
                    let mut counter = Counter::default();
                    counter.set_value(seconds);
                    metric.set_counter(counter);
                }
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported() -> f64 {
        let family = ProcessMetrics::for_self().collect().into_iter().find(|f| f.name() == CPU_SECONDS).unwrap();
        family.get_metric()[0].get_counter().get_value()
    }

    #[test]
    fn cpu_seconds_are_exported_to_the_tick_not_in_whole_seconds() {
        // Burn a little CPU so the figure is not 0.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let exact = cpu_seconds().unwrap();
        let shown = exported();
        assert!(shown > 0.0, "CPU time is counted");
        // The crate's own collector shows floor(exact): off by the fraction of a second.
        assert!((shown - exact).abs() < 0.05, "exported {shown} s, the process used {exact} s");
    }
}
