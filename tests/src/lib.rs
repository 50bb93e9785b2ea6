//! impush conformance suite (being written).
