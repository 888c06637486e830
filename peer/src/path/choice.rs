//! The table's timers and its choice of path.

use std::time::Instant;

use super::{Action, GiveUpReason, PathMode, PathTable, Route, SwitchReason};

impl PathTable {
    /// Fails paths whose pongs stopped, chooses again, and gives up when
    /// nothing has worked for too long.
    pub(super) fn expire(&mut self, now: Instant) {
        let mut changed = self.relay_grace_at().is_some_and(|t| t <= now);
        for c in &mut self.paths {
            changed |= c.expire(now, &self.cfg);
        }
        if changed {
            self.choose(now);
        }
        if self.paths.iter().any(|c| c.usable()) {
            self.last_usable = now;
        } else if self.give_up_at().is_some_and(|t| t <= now) && !self.gave_up() {
            let reason = if self.mode == PathMode::Direct && !self.direct_validated {
                GiveUpReason::DirectUnreachable
            } else {
                GiveUpReason::NoPath
            };
            self.actions.push_back(Action::GiveUp { reason });
        }
    }

    /// When the table gives up if nothing validates first.
    pub(super) fn give_up_at(&self) -> Option<Instant> {
        if self.paths.iter().any(|c| c.usable()) {
            return None;
        }
        let mut at = self.last_usable + self.cfg.give_up_after;
        if self.mode == PathMode::Direct && !self.direct_validated {
            at = at.min(self.start + self.cfg.direct_deadline);
        }
        Some(at)
    }

    /// While no path is chosen and only the relay validated: when the
    /// call settles on it ([`super::PathConfig::relay_grace`]).
    pub(super) fn relay_grace_at(&self) -> Option<Instant> {
        if self.chosen.is_some() {
            return None;
        }
        self.relay_validated_at.map(|t| t + self.cfg.relay_grace)
    }

    /// Whether a direct candidate is still in its first probing (not failed).
    fn direct_probing(&self) -> bool {
        self.paths.iter().any(|c| {
            c.route != Route::Relay && c.verified() && c.state == super::PathState::Probing
        })
    }

    fn gave_up(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::GiveUp { .. }))
    }

    /// Picks the path per the module's rules and queues a switch if it
    /// changes.
    pub(super) fn choose(&mut self, now: Instant) {
        let best_direct = self
            .paths
            .iter()
            .filter(|c| c.usable() && c.route != Route::Relay)
            .min_by_key(|c| c.rtt());
        if best_direct.is_some() {
            self.direct_validated = true;
        }
        let best_direct = best_direct.map(|c| (c.route, c.rtt()));
        let relay = self
            .paths
            .iter()
            .any(|c| c.route == Route::Relay && c.usable());
        let current = self
            .chosen
            .and_then(|r| self.paths.iter().find(|c| c.route == r));
        let next = match (current, best_direct) {
            (None, Some((to, _))) if self.chosen.is_none() => Some((to, SwitchReason::First)),
            (None, None) if self.chosen.is_none() && relay => {
                let waited = self.relay_grace_at().is_some_and(|t| t <= now);
                (waited || !self.direct_probing()).then_some((Route::Relay, SwitchReason::First))
            }
            (Some(cur), Some((to, _))) if cur.route == Route::Relay => {
                Some((to, SwitchReason::Upgrade))
            }
            (Some(cur), Some((to, rtt))) if cur.usable() => {
                let better = match (rtt, cur.rtt()) {
                    (Some(new), Some(old)) => to != cur.route && self.cfg.clearly_better(new, old),
                    _ => false,
                };
                better.then_some((to, SwitchReason::LowerRtt))
            }
            (Some(cur), Some((to, _))) if to != cur.route => Some((to, SwitchReason::Failed)),
            (Some(cur), None) if !cur.usable() && cur.route != Route::Relay && relay => {
                Some((Route::Relay, SwitchReason::Failed))
            }
            _ => None,
        };
        if let Some((to, reason)) = next {
            self.switch(to, reason, now);
        }
    }

    fn switch(&mut self, to: Route, reason: SwitchReason, now: Instant) {
        let reason = self.birthday_reason(to, reason);
        self.chosen = Some(to);
        if let Some(c) = self.paths.iter_mut().find(|c| c.route == to) {
            // Liveness on the new path starts now, not a standby gap later.
            c.next_ping = Some(
                c.next_ping
                    .map_or(now, |t| t.min(now + self.cfg.liveness_interval)),
            );
        }
        self.actions.push_back(Action::Switch { to, reason });
        self.actions.push_back(Action::Nudge);
        self.birthday_switched(to, now);
    }
}
