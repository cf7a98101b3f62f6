//! Weighted progress of an action (reference section 3.3).

use std::collections::HashMap;

pub struct ProgressTracker {
    steps: Vec<String>,
    weights: HashMap<String, u32>,
    current: usize,
    current_progress: u8,
}

impl ProgressTracker {
    pub fn new(steps: impl IntoIterator<Item = String>) -> Self {
        ProgressTracker { steps: steps.into_iter().collect(), weights: HashMap::new(), current: 0, current_progress: 0 }
    }

    fn weight(&self, step: &str) -> u64 {
        u64::from(*self.weights.get(step).unwrap_or(&1))
    }

    pub fn set_weight(&mut self, step: String, weight: u32) {
        self.weights.insert(step, weight);
    }

    pub fn start_step(&mut self, index: usize) {
        self.current = index;
        self.current_progress = 0;
    }

    pub fn set_step_progress(&mut self, p: u8) {
        self.current_progress = p.min(100);
    }

    /// NS8's formula: `100·(Σ finished weights·100 + current progress·weight) / (Σ weights·100)`.
    pub fn percent(&self) -> u8 {
        let total: u64 = self.steps.iter().map(|s| self.weight(s) * 100).sum();
        if total == 0 {
            return 0;
        }
        let done: u64 = self.steps[..self.current.min(self.steps.len())].iter().map(|s| self.weight(s) * 100).sum();
        let current =
            self.steps.get(self.current).map(|s| self.weight(s) * u64::from(self.current_progress)).unwrap_or(0);
        ((100 * (done + current)) / total).min(100) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_the_first_of_two_steps_is_25() {
        let mut p = ProgressTracker::new(["10a".to_string(), "20b".to_string()]);
        p.start_step(0);
        p.set_step_progress(50);
        assert_eq!(p.percent(), 25);
        p.set_step_progress(100);
        assert_eq!(p.percent(), 50);
        p.set_weight("20b".into(), 3);
        assert_eq!(p.percent(), 25);
        p.start_step(1);
        p.set_step_progress(100);
        assert_eq!(p.percent(), 100);
        let mut zero = ProgressTracker::new(["x".to_string()]);
        zero.set_weight("x".into(), 0);
        assert_eq!(zero.percent(), 0);
    }
}
