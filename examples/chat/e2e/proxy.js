// A TCP proxy in front of the impush node, so the test can drop one user's WebSocket the way a
// network does: both ends get a TCP reset, the browser and the node each notice on their own.
//
// The node advertises the proxy's address (`cluster.nodes[].url`), so every page connects
// through it. The proxy reads the upgrade request, takes the client id from the connect token
// (`v1.<base64url JSON {"c": client, ...}>.<signature>`: it only reads it, it checks nothing),
// then pipes bytes both ways untouched.

import net from "node:net";

export async function startProxy() {
  let target = null; // the node's port, known once the chat program printed it
  const links = new Set(); // { client, down, up }
  const blocked = new Set();

  const server = net.createServer((down) => {
    down.setNoDelay(true);
    down.on("error", () => {});
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (head.length > 16384) down.destroy();
        return;
      }
      down.off("data", onData);
      down.pause();
      const client = clientOf(head.subarray(0, end).toString("latin1"));
      if (target === null || blocked.has(client)) {
        down.resetAndDestroy();
        return;
      }
      const up = net.connect(target, "127.0.0.1");
      up.setNoDelay(true);
      const link = { client, down, up };
      links.add(link);
      const drop = () => {
        links.delete(link);
        down.destroy();
        up.destroy();
      };
      for (const s of [down, up]) s.on("error", drop).on("close", drop);
      up.on("connect", () => {
        up.write(head);
        down.pipe(up);
        up.pipe(down);
        down.resume();
      });
    };
    down.on("data", onData);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });

  return {
    port: server.address().port,
    /** Where to forward: the node's port. */
    setTarget(port) {
      target = port;
    },
    /** How many open connections `client` has through the proxy. */
    count(client) {
      return [...links].filter((l) => l.client === client).length;
    },
    /** Resets every connection of `client` and refuses new ones until `unblock`. */
    block(client) {
      blocked.add(client);
      for (const l of [...links]) {
        if (l.client !== client) continue;
        links.delete(l);
        l.down.resetAndDestroy();
        l.up.resetAndDestroy();
      }
    },
    unblock(client) {
      blocked.delete(client);
    },
    async close() {
      for (const l of links) {
        l.down.destroy();
        l.up.destroy();
      }
      links.clear();
      await new Promise((r) => server.close(r));
    },
  };
}

function clientOf(head) {
  const m = /^GET \S*[?&]token=v1\.([A-Za-z0-9_-]+)\./.exec(head);
  if (!m) return null;
  try {
    return JSON.parse(Buffer.from(m[1], "base64url").toString("utf8")).c ?? null;
  } catch {
    return null;
  }
}
