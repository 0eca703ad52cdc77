//! Read models: each view is a fold over events in global order, committed
//! together with its checkpoint, and can be dropped and rebuilt from
//! position zero. The projection engine and the first views (sessions,
//! accounts, audit, metrics) arrive with the gateway and identity issue.
