// GraphiQL against this gateway: queries and mutations over HTTP POST,
// subscriptions over the WebSocket, both at /graphql on this origin.
// Log in with the `login` mutation, then put
// {"Authorization": "Bearer <accessToken>"} in the Headers tab: GraphiQL
// sends it with every request and in the WebSocket's connection_init.
// A link may bring a ready document as `?query=…` (the demo prints one).
(function () {
  'use strict';
  var ready = new URLSearchParams(window.location.search).get('query');
  var http = new URL('/graphql', window.location.origin);
  var ws = new URL(http);
  ws.protocol = http.protocol === 'https:' ? 'wss:' : 'ws:';
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher: GraphiQL.createFetcher({
        url: http.toString(),
        subscriptionUrl: ws.toString(),
      }),
      defaultEditorToolsVisibility: true,
      query: ready === null ? undefined : ready,
    })
  );
})();
