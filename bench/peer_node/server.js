// The original's stack as a benchmark peer: Express 5 + Socket.IO 4 + ioredis + mongoose,
// doing what the original service does and no more (see bench/README.md, "The Node.js peer").
//
//   POST /notifications {userId, message}  store, drop the user's cache, keep the 50 most
//                                          recent, publish on new_notification -> 201 + document
//   GET  /notifications/:userId            the cached list, else MongoDB's (cached 120 s)
//   Socket.IO, ?userId= in the handshake   joins room user_<userId>; every instance relays
//                                          new_notification to its rooms as a "notify" event
//
// One console.log per request and per connection, as the original does.
// PORT, REDIS_URL and MONGO_URI come from the environment; GET /healthz answers once the
// MongoDB and Redis connections are up and the subscription is made.
"use strict";

const http = require("node:http");
const express = require("express");
const { Server } = require("socket.io");
const Redis = require("ioredis");
const mongoose = require("mongoose");

const PORT = Number(process.env.PORT || 3000);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const MONGO_URI = process.env.MONGO_URI || "mongodb://127.0.0.1:27017/notifications";
const CHANNEL = "new_notification";

const Notification = mongoose.model(
  "Notification",
  new mongoose.Schema({
    userId: { type: String, required: true },
    message: { type: String, required: true },
    time: { type: Date, default: Date.now },
  }),
);

// the original's three connections: commands, publishing, and this instance's subscriber
const redisOptions = { maxRetriesPerRequest: null, enableReadyCheck: false };
const redis = new Redis(REDIS_URL, redisOptions);
const pub = new Redis(REDIS_URL, redisOptions);
const sub = new Redis(REDIS_URL, redisOptions);
for (const [name, conn] of Object.entries({ redis, pub, sub })) {
  conn.on("error", (err) => console.error(`Redis ${name} error:`, err.message));
}

const app = express();
app.use(express.json());
let ready = false;

app.get("/healthz", (req, res) => {
  res.status(ready ? 200 : 503).json({ status: ready ? "ok" : "starting" });
});

app.get("/notifications/:userId", async (req, res) => {
  const { userId } = req.params;
  const cacheKey = `notifications:${userId}`;
  const cached = await redis.get(cacheKey);
  console.log(`GET ${cacheKey} ${cached ? "cached" : "from MongoDB"}`);
  if (cached) {
    res.json(JSON.parse(cached));
    return;
  }
  const notifications = await Notification.find({ userId }).sort({ time: -1 }).lean();
  await redis.setex(cacheKey, 120, JSON.stringify(notifications));
  res.json(notifications);
});

app.post("/notifications", async (req, res) => {
  const { userId, message } = req.body;
  const notification = await Notification.create({ userId, message });
  console.log(notification);
  await redis.del(`notifications:${userId}`);
  await redis.lpush("recent_notifications", message);
  await redis.ltrim("recent_notifications", 0, 49);
  await pub.publish(CHANNEL, JSON.stringify({ userId, message }));
  res.status(201).json(notification);
});

const server = http.createServer(app);
const io = new Server(server);

io.on("connection", (socket) => {
  const { userId } = socket.handshake.query;
  if (userId) {
    socket.join(`user_${userId}`);
    console.log(`User ${userId} joined room`);
  }
  socket.on("disconnect", () => console.log("Client disconnected"));
});

sub.on("message", (channel, raw) => {
  if (channel !== CHANNEL) return;
  const { userId, message } = JSON.parse(raw);
  io.to(`user_${userId}`).emit("notify", message);
});

async function main() {
  await mongoose.connect(MONGO_URI);
  await sub.subscribe(CHANNEL);
  server.listen(PORT, "127.0.0.1", () => {
    ready = true;
    console.log(`Server running on port ${PORT}`);
  });
}

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    io.close();
    Promise.allSettled([mongoose.disconnect(), redis.quit(), pub.quit(), sub.quit()]).then(() =>
      process.exit(0),
    );
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
