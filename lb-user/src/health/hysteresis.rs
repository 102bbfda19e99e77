//! Rise/fall hysteresis: a backend goes down after `fall` failed checks in a
//! row and comes back up after `rise` successful ones. Until its first check
//! a backend is assumed up (like HAProxy), and that first check decides at
//! once. Pure: no clock, no I/O, no logging; the caller logs the [`Step`].

/// The check history of one backend (its health itself is the caller's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hysteresis {
    /// Consecutive successful / failed checks.
    pub ok_streak: u32,
    pub fail_streak: u32,
    /// Whether any check has run since the backend was added (or its checks
    /// were restarted).
    pub checked: bool,
}

/// What one check result did to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Up and the check passed: nothing to say.
    Steady,
    /// Down, the check passed: `n` of `rise` successes so far.
    Rising(u32),
    /// Down, and `rise` checks passed in a row: it is up now.
    Up,
    /// Up, the check failed: `n` of `fall` failures so far.
    Falling(u32),
    /// Up, and `fall` checks failed in a row: it is down now.
    Down,
    /// Up, and its very first check failed: it is down now.
    DownAtFirstCheck,
    /// Down, the check failed again: `n` failures in a row.
    StillDown(u32),
}

impl Step {
    /// The backend's health changed.
    pub fn changed(self) -> bool {
        matches!(self, Step::Up | Step::Down | Step::DownAtFirstCheck)
    }
}

impl Hysteresis {
    /// Records one result for a backend that is `healthy` now; the step
    /// says whether (and why) its health changes.
    pub fn record(&mut self, healthy: bool, ok: bool, rise: u32, fall: u32) -> Step {
        let first = !self.checked;
        self.checked = true;
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            match healthy {
                true => Step::Steady,
                false if self.ok_streak >= rise => Step::Up,
                false => Step::Rising(self.ok_streak),
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            match healthy {
                true if first => Step::DownAtFirstCheck,
                true if self.fail_streak >= fall => Step::Down,
                true => Step::Falling(self.fail_streak),
                false => Step::StillDown(self.fail_streak),
            }
        }
    }

    /// The checks start afresh (their settings changed).
    pub fn restart(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` to a backend that starts `healthy`; the steps and its
    /// health after each.
    fn run(healthy: bool, results: &[bool], rise: u32, fall: u32) -> Vec<(Step, bool)> {
        let (mut h, mut up) = (Hysteresis::default(), healthy);
        results
            .iter()
            .map(|&ok| {
                let step = h.record(up, ok, rise, fall);
                if step.changed() {
                    up = !up;
                }
                (step, up)
            })
            .collect()
    }

    #[test]
    fn the_first_check_decides_at_once() {
        assert_eq!(run(true, &[false], 2, 3), [(Step::DownAtFirstCheck, false)]);
        assert_eq!(run(true, &[true, false], 2, 3), [(Step::Steady, true), (Step::Falling(1), true)]);
    }

    #[test]
    fn down_after_fall_failures_in_a_row() {
        let steps = run(true, &[true, false, false, true, false, false, false, false], 2, 3);
        let want = [
            (Step::Steady, true),
            (Step::Falling(1), true),
            (Step::Falling(2), true),
            (Step::Steady, true),
            (Step::Falling(1), true),
            (Step::Falling(2), true),
            (Step::Down, false),
            (Step::StillDown(4), false),
        ];
        assert_eq!(steps, want);
    }

    #[test]
    fn up_after_rise_successes_in_a_row() {
        let steps = run(false, &[true, false, true, true, true], 2, 3);
        let want = [
            (Step::Rising(1), false),
            (Step::StillDown(1), false),
            (Step::Rising(1), false),
            (Step::Up, true),
            (Step::Steady, true),
        ];
        assert_eq!(steps, want);
    }

    #[test]
    fn rise_and_fall_of_one_follow_every_result() {
        let steps = run(true, &[true, false, true, false], 1, 1);
        let ups: Vec<bool> = steps.iter().map(|s| s.1).collect();
        assert_eq!(ups, [true, false, true, false], "{steps:?}");
    }

    #[test]
    fn restart_makes_the_next_check_a_first_one() {
        let mut h = Hysteresis::default();
        h.record(true, true, 2, 3);
        h.restart();
        assert_eq!(h, Hysteresis::default());
        assert_eq!(h.record(true, false, 2, 3), Step::DownAtFirstCheck);
    }
}
