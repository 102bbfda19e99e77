//! STUB: Maglev table builder (being written).
