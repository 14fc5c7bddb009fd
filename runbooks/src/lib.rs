//! Tandem runbooks: the runbook model, parser and validator, planner and executor.
