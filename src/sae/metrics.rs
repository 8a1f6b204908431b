//! SAE evaluation metrics (being written).
