//! The runner: a separate process that connects out to a gateway, leases
//! work, drives headless Chromium (chromiumoxide) and reports progress as
//! events. Only ever sends traffic to consented domains. Arrives with the
//! runner issue.
