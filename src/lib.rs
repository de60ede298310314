//! smig: declarative secure migration of virtual machines out of a trusted environment.
//!
//! Data flows one way: `config` (HCL → [`model::Landscape`]) and `discover` (what runs →
//! [`model::Observed`]) feed `plan` (diff → step DAG → invariant check), which `cli` renders
//! and `apply` executes through drivers. `config`, `model` and `plan` do no I/O.

pub mod apply;
pub mod cli;
pub mod config;
pub mod discover;
pub mod drivers;
pub mod model;
pub mod plan;
pub mod planfile;
pub mod schema;
pub mod state;
