// A bot's event endpoint, as a bot would write it: each delivery is checked
// with npm `standardwebhooks` (the Standard Webhooks reference library) and
// the app's `whsec_...` secret before it is believed.
import { createServer } from "node:http";
import { Webhook } from "standardwebhooks";

export async function startReceiver({ secret }) {
  const webhook = new Webhook(secret);
  const events = [];
  const rejected = [];
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    try {
      const event = webhook.verify(body, req.headers);
      events.push({ id: req.headers["webhook-id"], event });
      res.statusCode = 204;
    } catch (err) {
      rejected.push(String(err.message || err));
      res.statusCode = 401;
    }
    res.end();
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/events`,
    events,
    rejected,
    /** Resolves with the events once `done(events)` holds (10 s at most). */
    async waitFor(done, timeoutMs = 10000) {
      const deadline = Date.now() + timeoutMs;
      while (!done(events)) {
        if (Date.now() > deadline) throw new Error(`events did not arrive: ${JSON.stringify(events)} rejected: ${JSON.stringify(rejected)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      return events;
    },
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}
