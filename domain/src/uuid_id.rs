//! Ids the gateway makes for aggregates (a dataset, an upload): UUIDv7s,
//! so they sort by creation, whose streams are `<aggregate>-<uuid>`.

/// Declares an id newtype over a UUIDv7 for `$aggregate`'s streams.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $aggregate:literal) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh id (UUIDv7).
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            #[doc = concat!("The stream: `", $aggregate, "-<id>`.")]
            pub fn stream(&self) -> $crate::envelope::StreamId {
                $crate::envelope::StreamId::for_aggregate($aggregate, self.0)
                    .expect("an aggregate's name and a UUID make a valid stream id")
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

pub(crate) use uuid_id;
