//! The reference classifier: a first-match scan over the rules.

use crate::rule::{Action, Defaults, Key, Rule, RuleSet, NO_MATCH};

/// First-match linear scan. Slow and obviously right; the compiled
/// [`crate::Classifier`] is tested against it.
#[derive(Clone, Debug)]
pub struct LinearClassifier {
    rules: Vec<Rule>,
    defaults: Defaults,
}

impl LinearClassifier {
    /// Take the rules in evaluation order ([`RuleSet::ordered`]).
    pub fn new(set: &RuleSet) -> LinearClassifier {
        LinearClassifier {
            rules: set.ordered(),
            defaults: Defaults::from_set(set),
        }
    }

    /// Index of the first matching rule, or [`NO_MATCH`].
    pub fn classify(&self, key: &Key) -> u32 {
        self.rules
            .iter()
            .position(|r| r.matches(key))
            .map_or(NO_MATCH, |i| i as u32)
    }

    /// [`Self::classify`] for each key.
    pub fn classify_burst(&self, keys: &[Key], out: &mut [u32]) {
        for (k, o) in keys.iter().zip(out.iter_mut()) {
            *o = self.classify(k);
        }
    }

    /// The action for a classification result.
    pub fn action(&self, matched: u32, vni: u32) -> Action {
        self.defaults.action(&self.rules, matched, vni)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules?
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule at evaluation index `idx`. Panics if `idx >= len()`.
    pub fn rule(&self, idx: u32) -> &Rule {
        &self.rules[idx as usize]
    }
}
