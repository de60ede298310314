//! JSON Schemas (draft 2020-12) of the documents smig reads and writes, generated from the
//! types themselves: `schemas/plan.schema.json` (the plan document) and
//! `schemas/observed.schema.json` (the discovered landscape / recorded snapshot). A test keeps
//! the committed files equal to what this module generates.

use crate::model::{HostId, MigrationMode, Observed};
use crate::planfile::PlanFile;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

impl JsonSchema for HostId {
    fn schema_name() -> Cow<'static, str> {
        "HostId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A host's id: `<environment>.<host>`, e.g. `dc.hv1`.",
            "type": "string",
            "pattern": "^[^.]+\\.[^.]+$"
        })
    }
}

impl JsonSchema for MigrationMode {
    fn schema_name() -> Cow<'static, str> {
        "MigrationMode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Live migration (the default) or cold (shut down, move, start).",
            "type": "string",
            "enum": ["live", "cold"]
        })
    }
}

fn render(schema: Schema) -> String {
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The schema of the plan document (`smig plan --json`, `--out`).
pub fn plan_schema() -> String {
    render(schemars::schema_for!(PlanFile))
}

/// The schema of the discovered landscape snapshot (`smig plan --observed FILE`).
pub fn observed_schema() -> String {
    render(schemars::schema_for!(Observed))
}
