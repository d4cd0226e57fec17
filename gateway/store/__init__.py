"""Durable state behind one interface (SQLite by default): subscribers, bindings, CDRs."""
