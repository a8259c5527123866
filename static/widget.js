/*!
 * chatgate widget.js — sign the user of an embedded chat widget in through
 * chatgate and get a chat token for the bot. Plain JavaScript, no build step.
 *
 *   <script src="https://auth.example.com/v1/widget.js"></script>
 *   <script>
 *     const opts = { broker: "https://auth.example.com", app: "support" };
 *     ChatGate.signIn(opts)                                  // hidden iframe, no UI
 *       .catch((err) => {
 *         // err.code: login_required, consent_required, interaction_required,
 *         // account_selection_required, timeout, ... => ask the user to click
 *         button.onclick = () => ChatGate.signInWithPopup(opts).then(start);
 *       })
 *       .then(start);
 *     function start(result) {
 *       // result: { type, app, chat_token, expires_at, user: { id, name, email },
 *       //           direct_line (apps with Direct Line) }
 *       ChatGate.keepSignedIn({ ...opts, initial: result, onToken: useToken, onError: showButton });
 *     }
 *   </script>
 *
 * API (every function takes { broker, app, ... }; `broker` is chatgate's URL):
 *   ChatGate.signIn({ broker, app, loginHint, domainHint, timeoutMs = 10000 })
 *       Silent sign-in: first in one fetch from chatgate's session
 *       (POST /v1/session/token), else in a hidden iframe, whose outcome a
 *       fetch waits for (where the browser keeps chatgate's partitioned
 *       cookie, no page of chatgate's then loads in the frame). Resolves with the success message;
 *       rejects with an Error whose .code is the IdP's error (login_required, ...)
 *       or "timeout".
 *   ChatGate.signInWithPopup({ broker, app, loginHint, domainHint, prompt, timeoutMs = 300000 })
 *       Interactive sign-in in a popup; call it from a click. Rejects with
 *       .code "popup_blocked", "popup_closed", "timeout" or the IdP's error.
 *   ChatGate.signOut({ broker, app, revoke = false, idp = false })
 *       Ends chatgate's session for this page's origin; with revoke, also revokes
 *       the user's tokens at the IdP and deletes them from chatgate's vault.
 *       With idp (call it from a click: it opens a popup), then also signs out
 *       at the IdP (its end_session_endpoint); resolves once the IdP sent the
 *       popup back ({ signed_out, revoked, idp_signed_out: true }). Rejects with
 *       .code idp_signout_unsupported when the IdP has no sign-out endpoint
 *       (the local sign-out is done; err.result holds its answer),
 *       popup_blocked, popup_closed.
 *   ChatGate.signInWithHostToken({ broker, app, token })
 *       The host's backend already knows the user and signed a short-lived JWT
 *       about them (see the README); resolves with the same success message.
 *       Rejects with .code invalid_token, token_expired, token_replayed,
 *       origin_not_allowed, ...
 *   ChatGate.exchangeIdToken({ broker, app, idToken })
 *       The page already holds an ID token from the app's identity provider
 *       (MSAL.js, oidc-client-ts); exchanges it for a chat token.
 *   ChatGate.keepSignedIn({ broker, app, initial, onToken, onError, renewBeforeSeconds = 60 })
 *       Gets a new chat token (silently) before the current one expires, calls
 *       onToken(result) with each, onError(err) when renewal needs the user.
 *       Returns { stop(), renewNow() }.
 *   ChatGate.directLine({ broker, app })
 *       Apps with [apps.direct_line]: the Direct Line token bound to the
 *       signed-in user that the latest sign-in brought, while it has more
 *       than 5 minutes to live, else null. Every success message carries it
 *       too, as result.direct_line = { token, conversation_id, expires_at,
 *       domain, user_id }: WebChat.createDirectLine({ token, domain }) runs
 *       on it as is (and refreshes it itself). When Direct Line could not be
 *       reached the chat token still comes, with result.direct_line_error =
 *       { error: "direct_line_unavailable" | "direct_line_refused",
 *       error_description }; the next renewal asks again.
 *   ChatGate.proof({ broker, app, htm, htu, token })
 *       For apps whose chat tokens are bound to this browser's key
 *       (bind_chat_tokens = "dpop"): a DPoP proof for one request of the page
 *       to its chat backend (method htm, URL htu) carrying the chat token
 *       (default: the latest this page received for the app). Send both; the
 *       backend checks them with POST /v1/chat-tokens/verify
 *       { token, proof, htm, htu }. Resolves with the proof (a string).
 *
 * Browser key: the library keeps a non-extractable P-256 key per chatgate
 * and app in this page's IndexedDB (first-party storage of the host site,
 * which every browser keeps) and proves possession of it (DPoP, RFC 9449)
 * to chatgate. A sign-in binds the key, so renewals keep working where the
 * browser keeps no cookie of chatgate's (Safari and every iOS browser,
 * Firefox blocking all third-party cookies). For apps with
 * bind_chat_tokens = "dpop" (chatgate lists them in the copy of this file it
 * serves) the chat tokens are bound to the key too (cnf.jkt) and it proves
 * possession to host-session and token-exchange. signOut forgets the key;
 * the next sign-in makes a new one.
 *
 * Fail fast: a hidden iframe that loaded a page which posts nothing (the IdP
 * shows a login page instead of answering prompt=none, a page refused to be
 * framed) rejects with .code "interaction_required" about a second after it
 * loaded, not after timeoutMs.
 *
 * Messages are accepted only from chatgate's origin AND from the iframe or popup
 * this library opened; everything else is ignored.
 */
(function (global) {
  "use strict";

  var SILENT_TIMEOUT_MS = 10000;
  var POPUP_TIMEOUT_MS = 5 * 60 * 1000;
  // How long a hidden iframe's page may take to post once it has loaded:
  // chatgate's result pages post while they load; anything else (an IdP's
  // login page, a page refused to be framed) never will.
  var FRAME_SETTLE_MS = 800;
  // A frame whose flow's outcome came by fetch stays this long for its own
  // answer (chatgate's 204 comes 20 ms after the fetch's), then goes.
  var FRAME_LINGER_MS = 1000;

  function required(opts, name) {
    if (!opts || !opts[name]) {
      throw chatgateError("invalid_request", "ChatGate: option '" + name + "' is required");
    }
    return opts[name];
  }

  function chatgateError(code, description) {
    var err = new Error(description || code);
    err.code = code;
    return err;
  }

  function brokerUrl(opts, path) {
    return new URL(path, required(opts, "broker")).toString();
  }

  // ---- the browser key (DPoP, RFC 9449) ----------------------------------

  // The apps whose chat tokens are bound to the browser's key; chatgate fills
  // this in when it serves the file (a copy of this file served elsewhere
  // can force it with the option dpop: true). Every app keeps a key to renew
  // by; these also bind their tokens to it.
  var KEY_BOUND_APPS = [];
  var DB_NAME = "chatgate";
  var KEY_STORE_TIMEOUT_MS = 3000;
  var DB_STORE = "keys";
  var keys = {}; // keyName -> Promise of { pair, jwk, jkt } or null
  var lastTokens = {}; // keyName -> the latest chat token
  // keyName -> true while this page's key was made here and has not signed
  // in yet: no sign-in can be bound to it, so a renewal by fetch (which only
  // chatgate's cookie could then answer) is skipped for the iframe, which
  // tries that cookie too.
  var unbound = {};
  var confirming = {}; // keyName -> the confirmation of the key in flight
  var directLines = {}; // keyName -> the latest Direct Line grant
  // A Direct Line token closer than this to its expiry is not handed out
  // again: the next renewal asks chatgate for a new one.
  var DIRECT_LINE_RENEW_MS = 5 * 60 * 1000;

  function keyName(opts) {
    return new URL(required(opts, "broker")).origin + " " + required(opts, "app");
  }

  function b64url(bytes) {
    var text = "";
    var view = new Uint8Array(bytes);
    for (var i = 0; i < view.length; i++) text += String.fromCharCode(view[i]);
    return global.btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function utf8(text) {
    return new global.TextEncoder().encode(text);
  }

  function sha256(text) {
    return global.crypto.subtle.digest("SHA-256", utf8(text)).then(b64url);
  }

  // One request on the key store; resolves with its result, or null when
  // IndexedDB is unavailable, fails, or does not answer within 3 s (a sign-in
  // then goes ahead without a key rather than hang).
  function keyStore(mode, act) {
    return new Promise(function (resolve) {
      setTimeout(function () {
        resolve(null);
      }, KEY_STORE_TIMEOUT_MS);
      var open;
      try {
        open = global.indexedDB.open(DB_NAME, 1);
      } catch (e) {
        return resolve(null);
      }
      open.onupgradeneeded = function () {
        open.result.createObjectStore(DB_STORE);
      };
      open.onerror = function () {
        resolve(null);
      };
      open.onsuccess = function () {
        var db = open.result;
        try {
          var request = act(db.transaction(DB_STORE, mode).objectStore(DB_STORE));
          request.onsuccess = function () {
            db.close();
            resolve(request.result == null ? null : request.result);
          };
          request.onerror = function () {
            db.close();
            resolve(null);
          };
        } catch (e) {
          db.close();
          resolve(null);
        }
      };
    });
  }

  function describeKey(pair) {
    return global.crypto.subtle.exportKey("jwk", pair.publicKey).then(function (full) {
      var jwk = { crv: full.crv, kty: full.kty, x: full.x, y: full.y };
      // RFC 7638: the required members in lexicographic order.
      return sha256(JSON.stringify(jwk)).then(function (jkt) {
        return { pair: pair, jwk: jwk, jkt: jkt };
      });
    });
  }

  // Whether the app's chat tokens are bound to the key (cnf.jkt).
  function bindsTokens(opts) {
    return opts.dpop === true || KEY_BOUND_APPS.indexOf(opts.app) >= 0;
  }

  // This page's key for the app: from IndexedDB, or a new non-extractable
  // one. Resolves with null where WebCrypto or IndexedDB is missing (or the
  // option browserKey: false turns it off).
  function browserKey(opts) {
    if (opts.browserKey === false && !bindsTokens(opts)) return Promise.resolve(null);
    var name = keyName(opts);
    if (keys[name]) return keys[name];
    if (!global.crypto || !global.crypto.subtle || !global.indexedDB) return Promise.resolve(null);
    // A new key is made while the stored one is looked for, and used only
    // where there is none (a first visit waits for neither in turn).
    var made = global.crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
    made.catch(function () {});
    keys[name] = keyStore("readonly", function (store) {
      return store.get(name);
    })
      .then(function (pair) {
        if (pair && pair.privateKey && pair.publicKey) return pair;
        return made.then(function (fresh) {
          // Stored while the sign-in goes on (a failed write only means
          // the next visit makes another key).
          keyStore("readwrite", function (store) {
            return store.put(fresh, name);
          });
          unbound[name] = true;
          return fresh;
        });
      })
      .then(describeKey)
      .catch(function () {
        return null;
      });
    keys[name].then(function (key) {
      if (!key) delete keys[name];
    });
    return keys[name];
  }

  function forgetKey(opts) {
    var name = keyName(opts);
    if (!global.indexedDB) return Promise.resolve();
    delete keys[name];
    delete lastTokens[name];
    return keyStore("readwrite", function (store) {
      return store.delete(name);
    });
  }

  // A DPoP proof of `key` for one request (htm, htu), with the hash of
  // `token` (ath) when one is presented.
  function signProof(key, htm, htu, token) {
    var header = { typ: "dpop+jwt", alg: "ES256", jwk: key.jwk };
    var jti = new Uint8Array(16);
    global.crypto.getRandomValues(jti);
    var claims = { jti: b64url(jti), htm: htm, htu: htu, iat: Math.floor(Date.now() / 1000) };
    return (token ? sha256(token) : Promise.resolve(null)).then(function (ath) {
      if (ath) claims.ath = ath;
      var input = b64url(utf8(JSON.stringify(header))) + "." + b64url(utf8(JSON.stringify(claims)));
      return global.crypto.subtle
        .sign({ name: "ECDSA", hash: "SHA-256" }, key.pair.privateKey, utf8(input))
        .then(function (signature) {
          return input + "." + b64url(signature);
        });
    });
  }

  // Headers for a POST of JSON to chatgate's `path`, with a proof of this
  // page's key when it has one (`withKey` false: none).
  function postHeaders(opts, path, withKey) {
    return (withKey === false ? Promise.resolve(null) : browserKey(opts)).then(function (key) {
      var headers = { "content-type": "application/json" };
      if (!key) return headers;
      return signProof(key, "POST", brokerUrl(opts, path)).then(function (proof) {
        headers.dpop = proof;
        return headers;
      });
    });
  }

  // The key thumbprint a chat token is bound to (cnf.jkt), if any.
  function boundTo(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var claims = JSON.parse(global.atob(part + "===".slice((part.length + 3) % 4)));
      return (claims.cnf && claims.cnf.jkt) || null;
    } catch (e) {
      return null;
    }
  }

  // Records the latest chat token and Direct Line grant; a success message
  // without a Direct Line token (a renewal that did not need one) gets the
  // fresh one this page holds.
  function remember(opts, data) {
    if (!data || data.type !== "chatgate:success") return data;
    var name = keyName(opts);
    delete unbound[name];
    if (data.chat_token) lastTokens[name] = data.chat_token;
    if (data.direct_line) {
      directLines[name] = data.direct_line;
    } else if (!data.direct_line_error && freshDirectLine(opts)) {
      data.direct_line = directLines[name];
    }
    return data;
  }

  // The Direct Line grant this page holds, if it is not about to expire.
  function freshDirectLine(opts) {
    var grant = directLines[keyName(opts)];
    return grant && grant.expires_at * 1000 - Date.now() > DIRECT_LINE_RENEW_MS ? grant : null;
  }

  function directLine(opts) {
    return freshDirectLine(opts || {});
  }

  // After an iframe sign-in that posted a chat token: presenting it with a
  // proof of this page's key confirms the key's binding, so later renewals
  // work without chatgate's cookie. Answers a fresh token; keeps `data` on
  // failure. (A token bound to another key confirms nothing.)
  function confirmKey(opts, data) {
    return browserKey(opts).then(function (key) {
      var bound = boundTo(data.chat_token);
      if (!key || (bound && bound !== key.jkt)) return data;
      return renewByFetch(opts, { chat_token: data.chat_token }).catch(function () {
        return data;
      });
    });
  }

  // confirmKey, off the sign-in's critical path: the page has its token now;
  // the confirmation (kept alive across a navigation) only matters to later
  // renewals, which wait for it.
  function confirmKeyLater(opts, data) {
    var name = keyName(opts);
    var done = browserKey(opts)
      .then(function (key) {
        var bound = boundTo(data.chat_token);
        if (!key || (bound && bound !== key.jkt)) return null;
        return renewByFetch(opts, { chat_token: data.chat_token, keepalive: true });
      })
      .catch(function () {
        return null;
      });
    confirming[name] = done;
    done.then(function () {
      if (confirming[name] === done) delete confirming[name];
    });
    return data;
  }

  // The result of a flow the browser finished without chatgate's cookie: a
  // ticket that a proof of this page's key turns into the success message.
  function redeemFlowTicket(opts, data) {
    if (!data || data.type !== "chatgate:ticket") return Promise.resolve(data);
    return renewByFetch(opts, { ticket: data.ticket });
  }

  function proof(opts) {
    opts = opts || {};
    var name;
    try {
      name = keyName(opts);
      required(opts, "htm");
      required(opts, "htu");
    } catch (e) {
      return Promise.reject(e);
    }
    return browserKey(opts).then(function (key) {
      if (!key) {
        throw chatgateError("unsupported", "this app's chat tokens are not bound to a key, or this browser has no WebCrypto or IndexedDB");
      }
      return signProof(key, String(opts.htm).toUpperCase(), opts.htu, opts.token || lastTokens[name]);
    });
  }

  // ---- sign-in ----------------------------------------------------------

  function authorizeUrl(opts, mode, jkt, ticketHash) {
    var url = new URL("/v1/authorize", required(opts, "broker"));
    url.searchParams.set("app", required(opts, "app"));
    url.searchParams.set("origin", global.location.origin);
    url.searchParams.set("mode", mode);
    if (opts.loginHint) url.searchParams.set("login_hint", opts.loginHint);
    if (opts.domainHint) url.searchParams.set("domain_hint", opts.domainHint);
    if (mode === "popup" && opts.prompt) url.searchParams.set("prompt", opts.prompt);
    if (jkt) url.searchParams.set("dpop_jkt", jkt);
    if (ticketHash) url.searchParams.set("ticket_hash", ticketHash);
    return url.toString();
  }

  // Waits for the one chatgate message from `sourceWindow()`; settles once.
  // `watch()`, polled, may end the wait with an error; `control.cancel()`
  // (set here when `control` is given) ends it with code "cancelled".
  function waitForResult(opts, sourceWindow, timeoutMs, watch, pollMs, control) {
    var expectedOrigin = new URL(required(opts, "broker")).origin;
    return new Promise(function (resolve, reject) {
      var settled = false;
      var timer = null;
      var poll = null;

      function finish(fn, value) {
        if (settled) return;
        settled = true;
        global.removeEventListener("message", onMessage);
        clearTimeout(timer);
        clearInterval(poll);
        fn(value);
      }

      function onMessage(event) {
        if (event.origin !== expectedOrigin) return;
        var source = sourceWindow();
        if (!source || event.source !== source) return;
        var data = event.data;
        if (!data || typeof data !== "object" || data.app !== opts.app) return;
        if (data.type === "chatgate:success" || data.type === "chatgate:signed_out" || data.type === "chatgate:ticket") {
          finish(resolve, data);
        } else if (data.type === "chatgate:error") {
          finish(reject, chatgateError(data.error || "server_error", data.error_description));
        }
      }

      if (control) {
        control.cancel = function () {
          finish(reject, chatgateError("cancelled"));
        };
      }
      global.addEventListener("message", onMessage);
      timer = setTimeout(function () {
        finish(reject, chatgateError("timeout", "chatgate did not answer within " + timeoutMs + " ms"));
      }, timeoutMs);
      if (watch) {
        poll = setInterval(function () {
          var why = watch();
          if (why) finish(reject, why);
        }, pollMs || 300);
      }
    });
  }

  // Renewal in one fetch: chatgate's session (in this site's cookie
  // partition) answers the success message directly. Rejects when it cannot
  // (no session, signed out, a hint for someone else): the iframe then asks
  // the IdP.
  // With `from.chat_token` (a token an iframe just delivered) it also
  // confirms this page's key; with `from.ticket` (a flow finished without
  // chatgate's cookie) it redeems that sign-in with the key.
  function renewByFetch(opts, from) {
    from = from || {};
    // A hint names whom to sign in: only the IdP can tell (a confirmation or
    // a ticket presents that very sign-in, so it goes ahead).
    var ofThisSignIn = from.chat_token || from.ticket;
    if ((!ofThisSignIn && (opts.loginHint || opts.domainHint)) || typeof global.fetch !== "function") {
      return Promise.reject(chatgateError("skipped"));
    }
    var body = { app: required(opts, "app") };
    // A confirmation in flight binds the key this renewal proves.
    var pending = (!ofThisSignIn && confirming[keyName(opts)]) || Promise.resolve();
    if (from.chat_token) body.chat_token = from.chat_token;
    if (from.ticket) body.ticket = from.ticket;
    if (from.wait) body.wait = true;
    // Apps with Direct Line: a new Direct Line token only when this page
    // holds none that is fresh (Web Chat refreshes the one it runs on).
    if (!freshDirectLine(opts)) body.direct_line = true;
    return pending
      .then(function () {
        // Headers made in advance (a waited flow's, while the flow starts).
        return from.headers || postHeaders(opts, "/v1/session/token");
      })
      .then(function (headers) {
        return global.fetch(brokerUrl(opts, "/v1/session/token"), {
          method: "POST",
          credentials: "include",
          headers: headers,
          body: JSON.stringify(body),
          keepalive: !!from.keepalive,
          signal: from.signal,
        });
      })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok || !body || body.type !== "chatgate:success" || body.app !== opts.app) {
            var err = chatgateError((body && body.error) || "server_error", body && body.error_description);
            // The error a flow the page waited for ended with (not a refusal
            // of the fetch itself).
            err.ofFlow = !!body && body.type === "chatgate:error" && body.app === opts.app;
            throw err;
          }
          return remember(opts, body);
        });
      });
  }

  function signIn(opts) {
    opts = opts || {};
    try {
      authorizeUrl(opts, "silent");
    } catch (e) {
      return Promise.reject(e);
    }
    // The ticket an iframe sign-in would wait for, picked meanwhile.
    var ticket = pickTicket();
    return browserKey(opts).then(function (key) {
      // A key made on this visit has no sign-in: straight to the iframe's
      // flow (whose start also says whether chatgate holds a session for
      // this page), without a fetch that cannot succeed.
      if (key && unbound[keyName(opts)]) return signInWithIframe(opts, ticket);
      return renewByFetch(opts).catch(function (err) {
        // chatgate answered but cannot tell now: the iframe would say the same.
        if (err.code === "temporarily_unavailable") throw err;
        return signInWithIframe(opts, null, true);
      });
    });
  }

  // Starts a silent flow from this page (POST /v1/authorize, a simple CORS
  // request: no preflight) and resolves with { url }, the IdP's URL for the
  // frame, one hop fewer than through chatgate's GET /v1/authorize; or with
  // { session: true } when chatgate holds a session for this page instead.
  // chatgate sets the flows' binding cookie in this site's cookie partition,
  // and the fetch that waits for the outcome, sent after, holds it. null
  // where that fails (no fetch, a network error, a refusal): the frame then
  // starts at GET /v1/authorize, which says why in its page.
  function startFlow(opts, jkt, ticketHash) {
    if (typeof global.fetch !== "function") return Promise.resolve(null);
    return global
      .fetch(authorizeUrl(opts, "silent", jkt, ticketHash), { method: "POST", credentials: "include" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(
        function (body) {
          if (body && body.session === true) return { session: true };
          var url = body && body.authorize_url;
          return typeof url === "string" && /^https?:\/\//.test(url) ? { url: url } : null;
        },
        function () {
          return null;
        }
      );
  }

  // A ticket for an iframe sign-in's outcome: { ticket, hash } (hex SHA-256),
  // or null without WebCrypto.
  function pickTicket() {
    if (!global.crypto || !global.crypto.subtle) return Promise.resolve(null);
    var bytes = new Uint8Array(32);
    global.crypto.getRandomValues(bytes);
    var ticket = b64url(bytes);
    return global.crypto.subtle.digest("SHA-256", utf8(ticket)).then(function (digest) {
      var hash = Array.prototype.map
        .call(new Uint8Array(digest), function (b) {
          return (b < 16 ? "0" : "") + b.toString(16);
        })
        .join("");
      return { ticket: ticket, hash: hash };
    }, function () {
      return null;
    });
  }

  // `renewalTried`: a renewal by fetch has just failed.
  function signInWithIframe(opts, ticket, renewalTried) {
    return browserKey(opts).then(function (key) {
      if (!key || typeof global.fetch !== "function" || typeof global.AbortController !== "function") {
        return frameOnly(opts, key);
      }
      return signInWithIframeAndFetch(opts, key, ticket || pickTicket(), renewalTried);
    });
  }

  // The flow in the frame alone: its page posts the result.
  function frameOnly(opts, key) {
    return framed(opts, openIframe(opts, authorizeUrl(opts, "silent", key && key.jkt)).result);
  }

  // What the frame's page posted, as the success message: a ticket is
  // redeemed with the key; a token confirms the key later.
  function framed(opts, posted) {
    return posted
      .then(function (data) {
        return data.type === "chatgate:ticket" ? redeemFlowTicket(opts, data) : confirmKeyLater(opts, remember(opts, data));
      })
      .then(function (data) {
        return remember(opts, data);
      });
  }

  // The hidden frame runs the flow, and a fetch waits for its outcome under
  // a ticket this page picked (only its hash goes into the flow's URL):
  // where the flow ends in the frame, chatgate answers the frame 204 and no
  // page of chatgate's loads in it (loading one, in a process of its own, was
  // most of a first sign-in's time). The outcome goes only to a fetch with a
  // proof of this page's key and the flows' binding cookie, which this page
  // gets as it starts the flow (startFlow) in its own site's cookie partition.
  // Whichever answers first wins: the fetch, or a page the frame posts from
  // (a browser that keeps no cookie; one without Sec-Fetch-Dest), or the
  // frame's timeout or fail-fast.
  function signInWithIframeAndFetch(opts, key, picked, renewalTried) {
    return Promise.resolve(picked).then(function (pick) {
      if (!pick) return frameOnly(opts, key);
      var viaChatgate = authorizeUrl(opts, "silent", key.jkt, pick.hash);
      // The waiting fetch's proof is made while the flow starts, so the
      // fetch goes out with the frame.
      pick.headers = postHeaders(opts, "/v1/session/token");
      return startFlow(opts, key.jkt, pick.hash).then(function (started) {
        if (!started || !started.session) return waitedFlow(opts, pick, (started && started.url) || viaChatgate);
        // chatgate holds a session for this page (its key is new): renewed
        // by fetch, or else through GET /v1/authorize in the frame.
        if (renewalTried) return waitedFlow(opts, pick, viaChatgate);
        return renewByFetch(opts).catch(function (err) {
          if (err.code === "temporarily_unavailable") throw err;
          return waitedFlow(opts, pick, viaChatgate);
        });
      });
    });
  }

  // The frame at `url`, and the fetch that waits for its outcome.
  function waitedFlow(opts, pick, url) {
    var frame = openIframe(opts, url);
    var abort = new global.AbortController();
    var waited = renewByFetch(opts, { ticket: pick.ticket, wait: true, signal: abort.signal, headers: pick.headers });
    return new Promise(function (resolve, reject) {
      framed(opts, frame.result).then(
        function (data) {
          abort.abort();
          resolve(data);
        },
        function (err) {
          abort.abort();
          reject(err);
        }
      );
      waited.then(
        function (data) {
          // chatgate answers the frame (204) just after this fetch: the
          // frame stays until then, so its navigation ends as the server
          // ends it rather than cut short.
          frame.cancel(FRAME_LINGER_MS);
          resolve(data);
        },
        function (err) {
          // The flow's own error ends the sign-in; a failed fetch leaves
          // it to the frame.
          if (!err.ofFlow) return;
          frame.cancel();
          reject(err);
        }
      );
    });
  }

  function openIframe(opts, url) {
    var iframe = global.document.createElement("iframe");
    iframe.setAttribute("aria-hidden", "true");
    iframe.setAttribute("tabindex", "-1");
    iframe.title = "chatgate sign-in";
    iframe.style.cssText = "position:absolute;width:0;height:0;border:0;visibility:hidden";
    // When the frame's latest page finished loading: a page that has not
    // posted shortly after will not (see FRAME_SETTLE_MS).
    var loadedAt = 0;
    iframe.addEventListener("load", function () {
      loadedAt = Date.now();
    });
    var control = {};
    var result = waitForResult(
      opts,
      function () {
        return iframe.contentWindow;
      },
      opts.timeoutMs || SILENT_TIMEOUT_MS,
      function () {
        if (!loadedAt || Date.now() - loadedAt < FRAME_SETTLE_MS) return null;
        return chatgateError(
          "interaction_required",
          "the sign-in page in the hidden frame did not answer (the identity provider wants the user, or the page cannot be framed)"
        );
      },
      100,
      control
    );
    iframe.src = url;
    global.document.body.appendChild(iframe);
    var lingerMs = 0;
    // Removed in a task of its own: taking a frame down (its process) does
    // not hold up the result.
    function cleanup() {
      setTimeout(function () {
        if (iframe.parentNode) iframe.parentNode.removeChild(iframe);
      }, lingerMs);
    }
    // { result: the message the frame posts, cancel(lingerMs): remove the
    // frame, after lingerMs }
    return {
      result: result.then(
        function (data) {
          cleanup();
          return data;
        },
        function (err) {
          cleanup();
          throw err;
        }
      ),
      cancel: function (linger) {
        lingerMs = linger || 0;
        control.cancel();
      },
    };
  }

  // Carries a popup sign-in into this page's cookie partition and binds
  // this page's key to it (with a proof), so the next silent sign-in needs no
  // IdP round trip, cookies blocked or not. Best effort: a failure only costs
  // a later IdP round trip.
  function redeemTicket(opts, ticket) {
    return postHeaders(opts, "/v1/session")
      .then(function (headers) {
        return global.fetch(brokerUrl(opts, "/v1/session"), {
          method: "POST",
          credentials: "include",
          headers: headers,
          body: JSON.stringify({ app: opts.app, ticket: ticket }),
        });
      })
      .catch(function () {});
  }

  // Opens a centred popup (synchronously: call from a click handler).
  function openPopup(url, name) {
    var width = 520;
    var height = 680;
    var left = Math.max(0, (global.screenX || 0) + ((global.outerWidth || width) - width) / 2);
    var top = Math.max(0, (global.screenY || 0) + ((global.outerHeight || height) - height) / 2);
    var popup = global.open(
      url,
      name,
      "popup=yes,width=" + width + ",height=" + height + ",left=" + left + ",top=" + top
    );
    if (popup) {
      try {
        popup.focus();
      } catch (e) {
        /* ignore */
      }
    }
    return popup;
  }

  // A popup that closes itself right after posting its result: the message
  // may still be on its way (WebKit delivers it after the window is gone), so
  // a closed popup counts only once it stayed closed for a moment.
  var CLOSED_GRACE_MS = 1000;
  function closedFor(popup, description) {
    if (!popup.closed) return null;
    popup.chatgateClosedAt = popup.chatgateClosedAt || Date.now();
    if (Date.now() - popup.chatgateClosedAt < CLOSED_GRACE_MS) return null;
    return chatgateError("popup_closed", description);
  }

  function closePopup(popup) {
    try {
      if (popup && !popup.closed) popup.close();
    } catch (e) {
      /* ignore */
    }
  }

  function signInWithPopup(opts) {
    opts = opts || {};
    var url;
    try {
      url = authorizeUrl(opts, "popup");
    } catch (e) {
      return Promise.reject(e);
    }
    // Opened now, within the click; sent to chatgate once the key is known.
    var popup = openPopup("about:blank", "chatgate_signin");
    if (!popup) {
      return Promise.reject(chatgateError("popup_blocked", "the browser blocked the sign-in popup; call signInWithPopup from a click"));
    }
    browserKey(opts).then(function (key) {
      popup.location.href = key ? authorizeUrl(opts, "popup", key.jkt) : url;
    });
    return waitForResult(
      opts,
      function () {
        return popup;
      },
      opts.timeoutMs || POPUP_TIMEOUT_MS,
      function () {
        return closedFor(popup, "the sign-in window was closed");
      }
    ).then(
      function (data) {
        if (data.type === "chatgate:ticket") {
          return redeemFlowTicket(opts, data).then(function (result) {
            return remember(opts, result);
          });
        }
        var ticket = data.session_ticket;
        delete data.session_ticket;
        // The ticket's redemption binds this page's key; without one, the
        // token confirms it.
        remember(opts, data);
        return (ticket ? redeemTicket(opts, ticket).then(function () { return data; }) : confirmKey(opts, data)).then(
          function (result) {
            return remember(opts, result);
          }
        );
      },
      function (err) {
        closePopup(popup);
        throw err;
      }
    );
  }

  // POSTs JSON without cookies and turns the answer into a success message.
  function postForChatToken(opts, path, body) {
    var url;
    try {
      url = brokerUrl(opts, path);
      required(opts, "app");
    } catch (e) {
      return Promise.reject(e);
    }
    return postHeaders(opts, path, bindsTokens(opts))
      .then(function (headers) {
        return global.fetch(url, {
          method: "POST",
          credentials: "omit",
          headers: headers,
          body: JSON.stringify(body),
        });
      })
      .then(function (response) {
        return response.json().then(function (answer) {
          if (!response.ok) throw chatgateError(answer.error || "server_error", answer.error_description);
          return remember(opts, {
            type: "chatgate:success",
            app: opts.app,
            chat_token: answer.chat_token,
            expires_at: answer.expires_at,
            user: answer.user,
            direct_line: answer.direct_line,
            direct_line_error: answer.direct_line_error,
          });
        });
      });
  }

  function signInWithHostToken(opts) {
    opts = opts || {};
    return postForChatToken(opts, "/v1/host-session", { app: opts.app, token: opts.token });
  }

  function exchangeIdToken(opts) {
    opts = opts || {};
    return postForChatToken(opts, "/v1/token-exchange", { app: opts.app, id_token: opts.idToken });
  }

  function signOut(opts) {
    opts = opts || {};
    var url;
    try {
      url = brokerUrl(opts, "/v1/signout");
      required(opts, "app");
    } catch (e) {
      return Promise.reject(e);
    }
    // The IdP sign-out popup opens now, within the click; it is sent on once
    // chatgate answers.
    var popup = null;
    if (opts.idp) {
      popup = openPopup("about:blank", "chatgate_signout");
      if (!popup) {
        return Promise.reject(chatgateError("popup_blocked", "the browser blocked the sign-out popup; call signOut({ idp: true }) from a click"));
      }
    }
    return postHeaders(opts, "/v1/signout")
      .then(function (headers) {
        return global.fetch(url, {
          method: "POST",
          credentials: "include",
          headers: headers,
          body: JSON.stringify({ app: opts.app, revoke: !!opts.revoke, idp: !!opts.idp }),
        });
      })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw chatgateError(body.error || "server_error", body.error_description);
          // The key renews nothing now; the next sign-in makes a new one.
          return forgetKey(opts).then(function () {
            return body;
          });
        });
      })
      .then(
        function (body) {
          if (!popup) return body;
          if (!body.idp_signout_url) {
            closePopup(popup);
            var err = chatgateError(body.idp_signout_error || "idp_signout_unsupported", body.idp_signout_error_description);
            err.result = body;
            throw err;
          }
          popup.location.href = body.idp_signout_url;
          return waitForResult(
            opts,
            function () {
              return popup;
            },
            opts.timeoutMs || POPUP_TIMEOUT_MS,
            function () {
              return closedFor(popup, "the sign-out window was closed");
            }
          ).then(
            function () {
              delete body.idp_signout_url;
              body.idp_signed_out = true;
              return body;
            },
            function (err) {
              closePopup(popup);
              throw err;
            }
          );
        },
        function (err) {
          closePopup(popup);
          throw err;
        }
      );
  }

  function keepSignedIn(opts) {
    opts = opts || {};
    var before = (opts.renewBeforeSeconds == null ? 60 : opts.renewBeforeSeconds) * 1000;
    var timer = null;
    var stopped = false;

    function schedule(result) {
      clearTimeout(timer);
      if (stopped) return;
      var wait = Math.max(0, result.expires_at * 1000 - before - Date.now());
      timer = setTimeout(renewNow, wait);
    }

    function renewNow() {
      clearTimeout(timer);
      return signIn(opts).then(
        function (result) {
          if (stopped) return result;
          if (opts.onToken) opts.onToken(result);
          schedule(result);
          return result;
        },
        function (err) {
          if (!stopped && opts.onError) opts.onError(err);
          throw err;
        }
      );
    }

    if (opts.initial) {
      schedule(opts.initial);
    } else {
      renewNow().catch(function () {});
    }
    return {
      stop: function () {
        stopped = true;
        clearTimeout(timer);
      },
      renewNow: renewNow,
    };
  }

  global.ChatGate = {
    version: "1",
    signIn: signIn,
    signInWithPopup: signInWithPopup,
    signInWithHostToken: signInWithHostToken,
    exchangeIdToken: exchangeIdToken,
    signOut: signOut,
    keepSignedIn: keepSignedIn,
    proof: proof,
    directLine: directLine,
  };
})(window);
