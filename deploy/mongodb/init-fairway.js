// Runs once, on the first start of an empty data volume (the mongo image's
// /docker-entrypoint-initdb.d): the application user of Fairway's database.
const name = process.env.FAIRWAY_MONGO_USER;
const password = process.env.FAIRWAY_MONGO_PASSWORD;
const database = process.env.FAIRWAY_MONGO_DATABASE || "fairway";
if (!name || !password) {
  throw new Error("FAIRWAY_MONGO_USER and FAIRWAY_MONGO_PASSWORD must be set");
}
db.getSiblingDB(database).createUser({
  user: name,
  pwd: password,
  roles: [{ role: "readWrite", db: database }],
});
print(`created MongoDB user ${name} on database ${database}`);
