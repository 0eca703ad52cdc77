//! The depth limit, measured so that the standard introspection query passes.
//!
//! async-graphql's own limit counts every field, and the query every GraphQL
//! tool sends first (graphql-js's `getIntrospectionQuery`: GraphiQL, Codegen,
//! Apollo, Postman) unwraps each type through eight nested `ofType`s, so a
//! limit low enough to stop abuse refuses it. A chain of `ofType` only peels
//! list and non-null wrappers off one type: each link is a single object (no
//! fan-out) and the chain ends in null where the wrappers end. So inside
//! `__schema` / `__type`, a chain of `ofType` counts as one level. Every
//! other field counts as async-graphql counts it, introspection included:
//! `fields { type { fields { … } } }` does fan out and stays limited.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerResult, Variables};

use crate::graphql::error::{Code, error};

/// Refuses documents nested deeper than its limit (see the module doc).
pub struct DepthLimit(pub usize);

impl ExtensionFactory for DepthLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DepthCheck(self.0))
    }
}

struct DepthCheck(usize);

#[async_trait::async_trait]
impl Extension for DepthCheck {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // Parsing also bounds nesting (fields and fragments) to
        // async-graphql's recursion limit and so rules out fragment cycles:
        // the walk below terminates.
        let doc = next.run(ctx, query, variables).await?;
        let deepest = depth(&doc);
        if deepest > self.0 {
            return Err(error(
                Code::Validation,
                format!(
                    "Query is nested too deep: {deepest} levels, at most {} (a chain of `ofType` counts as one)",
                    self.0
                ),
            )
            .into_server_error(Default::default()));
        }
        Ok(doc)
    }
}

/// The deepest operation's depth, by the rule in the module doc.
pub fn depth(doc: &ExecutableDocument) -> usize {
    doc.operations
        .iter()
        .map(|(_, op)| selection_depth(doc, &op.node.selection_set.node, Within::Operation))
        .max()
        .unwrap_or(0)
}

/// Where a selection set sits, as far as counting goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    Operation,
    Introspection,
    /// Directly inside an `ofType` of introspection.
    OfType,
}

fn selection_depth(doc: &ExecutableDocument, set: &SelectionSet, within: Within) -> usize {
    set.items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(field) => {
                // The field's name, not its alias: an alias cannot dodge the rule.
                let name = field.node.name.node.as_str();
                let (counts, inside) = match within {
                    Within::Operation if name == "__schema" || name == "__type" => {
                        (true, Within::Introspection)
                    }
                    Within::Operation => (true, Within::Operation),
                    Within::Introspection if name == "ofType" => (true, Within::OfType),
                    Within::OfType if name == "ofType" => (false, Within::OfType),
                    Within::Introspection | Within::OfType => (true, Within::Introspection),
                };
                usize::from(counts) + selection_depth(doc, &field.node.selection_set.node, inside)
            }
            Selection::FragmentSpread(spread) => doc
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |f| {
                    selection_depth(doc, &f.node.selection_set.node, within)
                }),
            Selection::InlineFragment(inline) => {
                selection_depth(doc, &inline.node.selection_set.node, within)
            }
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(query: &str) -> usize {
        depth(&async_graphql::parser::parse_query(query).unwrap())
    }

    #[test]
    fn every_field_counts_outside_introspection() {
        assert_eq!(depth_of("{ me { username } }"), 2);
        assert_eq!(depth_of("{ a { ofType { ofType { ofType { x } } } } }"), 5);
    }

    #[test]
    fn a_chain_of_of_type_counts_once_inside_introspection() {
        let chain = "{ __type(name: \"X\") { ofType { ofType { ofType { name } } } } }";
        assert_eq!(depth_of(chain), 3);
        let aliased = "{ __schema { types { a: ofType { b: ofType { name } } } } }";
        assert_eq!(depth_of(aliased), 4);
    }

    #[test]
    fn fields_that_fan_out_count_inside_introspection_too() {
        let cycle = format!(
            "{{ __schema {{ types {{ {} name {} }} }} }}",
            "fields { type { ofType { ".repeat(4),
            "} } } ".repeat(4)
        );
        assert_eq!(depth_of(&cycle), 15);
    }

    #[test]
    fn fragments_count_where_they_are_spread() {
        let q = "query { __schema { types { ...T } } } \
                 fragment T on __Type { fields { type { ...R } } } \
                 fragment R on __Type { ofType { ofType { ... on __Type { ofType { name } } } } }";
        assert_eq!(depth_of(q), 6);
    }
}
