//! The JSON plan: the plan document itself (`schemas/plan.schema.json`).

use super::PlanView;
use crate::planfile::PlanFile;

/// Pretty JSON following `schemas/plan.schema.json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl PlanView for Json {
    fn render(&self, plan: &PlanFile) -> String {
        plan.to_json()
    }
}
