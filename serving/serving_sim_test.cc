// A deterministic simulation of online serving (docs/online_serving.md, "Invariants"): a
// model of the trainers' tables produces versions (increments, full versions, tables created,
// dropped and reshaped, rows removed); a root relay applies them as the checkpoint source does
// (and restarts empty, then takes the newest version in full); subscribers take them through
// the stream's events from the relay with faults (a chunk lost, a stream cut mid-version, a
// version sent twice, a stale stream replayed), restart empty, roll back and resume. After every
// step: every replica's copies verify, and the version it serves equals the model at that
// version bit for bit (S1); served versions only move back by a rollback (S3); in the end
// every replica reaches the newest version (S4). Lookups compare rows with the model.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"
#include "serving.pb.h"
#include "serving/serving_store.h"
#include "serving/stream_codec.h"

namespace tessera::serving {
namespace {

struct ModelTable {
  TableConfig config;
  std::map<uint64_t, std::vector<float>> rows;
};
using Model = std::map<std::string, ModelTable>;  // one version of the trainers' tables

std::vector<TableDigest> DigestsOf(const Model& m) {
  std::vector<TableDigest> out;
  for (const auto& [name, t] : m) {
    TableDigest d{name, 0, t.rows.size()};
    for (const auto& [key, row] : t.rows)
      d.digest += RowDigest(key, row.data(), RowWidth(t.config));
    out.push_back(d);
  }
  return out;
}

TableConfig NewConfig(const std::string& name, std::mt19937_64& rng) {
  TableConfig c{.name = name};
  if (rng() % 4 == 0) {
    c.kind = TableKind::kDense;
    c.dense_block_elems = 1 + rng() % 4;
    c.dense_size = c.dense_block_elems * (1 + rng() % 6) - rng() % c.dense_block_elems;
  } else {
    c.kind = TableKind::kSparse;
    c.dim = 1 + rng() % 3;
  }
  c.initializer.kind = InitializerKind::kUniform;
  c.initializer.seed = rng() % 3;
  return *ResolveTableConfig(c);
}

uint64_t RandomKey(const TableConfig& c, std::mt19937_64& rng) {
  if (c.kind == TableKind::kDense) {
    return rng() % ((c.dense_size + c.dense_block_elems - 1) / c.dense_block_elems);
  }
  return rng() % 40;
}

// The next version of the model, and the delta a source would read for it.
VersionDelta NextVersion(Model* m, uint64_t version, bool full, std::mt19937_64& rng) {
  std::map<std::string, TableDelta> deltas;
  const std::vector<std::string> names = {"a", "b", "c"};
  for (const std::string& name : names) {
    auto it = m->find(name);
    const int action = rng() % 10;
    if (it == m->end()) {
      if (action < 3) {
        (*m)[name] = {NewConfig(name, rng), {}};
        deltas[name].full = true;
      }
    } else if (action == 0) {
      m->erase(it);
    } else if (action == 1) {
      it->second = {NewConfig(name, rng), {}};  // dropped and created again, maybe reshaped
      deltas[name].full = true;
    }
  }
  for (auto& [name, t] : *m) {
    TableDelta& d = deltas[name];
    d.config = t.config;
    const uint32_t w = RowWidth(t.config);
    std::map<uint64_t, std::pair<bool, std::vector<float>>> changed;  // key -> (present, row)
    for (int n = rng() % 8; n > 0; --n) {
      const uint64_t key = RandomKey(t.config, rng);
      if (rng() % 4 == 0) {
        if (t.rows.erase(key) != 0) changed[key] = {false, {}};
      } else {
        std::vector<float> row(w);
        for (float& x : row) x = static_cast<float>(rng() % 1000) / 8.0f;
        t.rows[key] = row;
        changed[key] = {true, row};
      }
    }
    const bool whole = full || d.full;
    d.full = whole;
    VshardDelta v;  // one group; the store does not depend on the grouping
    if (whole) {
      for (const auto& [key, row] : t.rows) {
        v.keys.push_back(key);
        v.weights.insert(v.weights.end(), row.begin(), row.end());
      }
    } else {
      for (const auto& [key, c] : changed) {
        if (c.first) {
          v.keys.push_back(key);
          v.weights.insert(v.weights.end(), c.second.begin(), c.second.end());
        } else {
          v.tombstones.push_back(key);
        }
      }
    }
    if (!v.keys.empty() || !v.tombstones.empty()) d.vshards.push_back(std::move(v));
  }
  VersionDelta out{.version = version,
                   .parent = full ? 0 : version - 1,
                   .created_unix_ms = static_cast<int64_t>(version),
                   .num_vshards = 4};
  for (auto& [name, t] : *m) out.tables.push_back(std::move(deltas[name]));
  return out;
}

// What a relay sends a subscriber holding `from`, as events.
std::vector<v1::SubscribeEvent> EventsFrom(const ServingStore& relay, uint64_t from) {
  std::shared_ptr<const VersionDelta> full;
  std::vector<std::shared_ptr<const VersionDelta>> deltas = relay.DeltasAfter(from, &full);
  std::vector<v1::SubscribeEvent> events;
  const EventWriter write = [&](const v1::SubscribeEvent& e) {
    events.push_back(e);
    return true;
  };
  if (full != nullptr) WriteDelta(*full, write);
  for (const auto& d : deltas) WriteDelta(*d, write);
  return events;
}

// A subscriber: a store fed through the stream's events, with a fault schedule.
struct Subscriber {
  std::unique_ptr<ServingStore> store;
  uint64_t last_served = 0;
  bool rolled_back = false;
};

struct Sim {
  std::mt19937_64 rng;
  std::vector<Model> models;  // models[v]: the trainers at version v (models[0]: nothing)
  std::unique_ptr<ServingStore> relay;
  std::vector<Subscriber> subs;
  uint64_t newest = 0;

  explicit Sim(uint64_t seed) : rng(seed) {
    models.emplace_back();
    relay = NewStore();
    for (int i = 0; i < 3; ++i) subs.push_back({NewStore()});
  }
  std::unique_ptr<ServingStore> NewStore() {
    return std::make_unique<ServingStore>(StoreOptions{.keep_versions = 1 + rng() % 3});
  }

  void Publish() {
    Model m = models.back();
    const bool full = newest == 0 || rng() % 6 == 0;
    VersionDelta d = NextVersion(&m, newest + 1, full, rng);
    models.push_back(std::move(m));
    ++newest;
    FeedRelay(std::move(d));
  }

  // As the directory source: a relay holding nothing reads the newest version in full.
  void FeedRelay(VersionDelta d) {
    const uint64_t held = relay->Status().newest_version;
    if (held != d.version - 1 && d.parent != 0) {
      Model m = models[d.version];
      d = FullOf(m, d.version);
    }
    REQUIRE(relay->Apply(std::move(d)).ok());
  }

  VersionDelta FullOf(const Model& m, uint64_t version) {
    VersionDelta d{
        .version = version, .created_unix_ms = static_cast<int64_t>(version), .num_vshards = 4};
    for (const auto& [name, t] : m) {
      TableDelta td{.config = t.config, .full = true};
      VshardDelta v;
      for (const auto& [key, row] : t.rows) {
        v.keys.push_back(key);
        v.weights.insert(v.weights.end(), row.begin(), row.end());
      }
      if (!v.keys.empty()) td.vshards.push_back(std::move(v));
      d.tables.push_back(std::move(td));
    }
    return d;
  }

  // One subscription round of subscriber `s` with a random fault.
  void Subscribe(Subscriber& s) {
    std::vector<v1::SubscribeEvent> events = EventsFrom(*relay, s.store->Status().newest_version);
    const int fault = rng() % 8;
    if (fault == 0 && !events.empty()) {
      events.erase(events.begin() + rng() % events.size());  // a lost event
    } else if (fault == 1 && !events.empty()) {
      events.resize(rng() % events.size());  // the relay died mid-stream
    } else if (fault == 2 && !events.empty()) {
      const std::vector<v1::SubscribeEvent> again = events;  // sent twice
      events.insert(events.end(), again.begin(), again.end());
    } else if (fault == 3) {
      // A late stream: what a relay would have sent from version 0.
      const std::vector<v1::SubscribeEvent> stale = EventsFrom(*relay, 0);
      events.insert(events.begin(), stale.begin(), stale.end());
    }
    StreamAssembler assembler(s.store.get());
    for (const v1::SubscribeEvent& e : events) {
      if (!assembler.Take(e).ok()) break;  // the subscriber drops the stream
    }
  }

  // S1, S3 and lookups against the model.
  void Check(const char* when) {
    for (size_t i = 0; i <= subs.size(); ++i) {
      ServingStore& store = i < subs.size() ? *subs[i].store : *relay;
      INFO(when << ": replica " << i);
      const absl::Status verified = store.Verify();
      INFO(verified.ToString());
      REQUIRE(verified.ok());
      const StoreStatus st = store.Status();
      REQUIRE(st.version <= newest);
      std::vector<TableDigest> got;
      for (const ServedTable& t : st.tables) got.push_back({t.config.name, t.digest, t.rows});
      INFO("version " << st.version << (st.pinned ? " (pinned)" : "") << ": digests "
                      << (got == DigestsOf(models[st.version]) ? "equal" : "differ"));
      REQUIRE(got == DigestsOf(models[st.version]));
      if (i < subs.size()) {
        Subscriber& s = subs[i];
        if (!s.rolled_back) REQUIRE(st.version >= s.last_served);
        s.last_served = st.version;
        s.rolled_back = false;
      }
      // Lookups at the served version and at the kept ones, against the model.
      for (uint64_t v : st.kept_versions) {
        if (v == 0) continue;
        for (const auto& [name, t] : models[st.version]) {
          if (models[v].contains(name) || t.config.kind != TableKind::kSparse) continue;
          const uint64_t key = 1;
          std::string values, found;
          REQUIRE_FALSE(store.Lookup(name, &key, 1, v, &values, &found).ok());
        }
        for (const auto& [name, t] : models[v]) {
          if (t.config.kind != TableKind::kSparse) continue;
          const uint64_t key = RandomKey(t.config, rng);
          std::string values, found;
          absl::StatusOr<LookupResult> r = store.Lookup(name, &key, 1, v, &values, &found);
          if (!r.ok()) {
            // Allowed only when the table changed shape or did not exist at the served one.
            REQUIRE(r.status().code() != absl::StatusCode::kInternal);
            continue;
          }
          auto row = t.rows.find(key);
          REQUIRE(((found[0] & 1) != 0) == (row != t.rows.end()));
          if (row != t.rows.end()) {
            REQUIRE(std::memcmp(values.data(), row->second.data(), values.size()) == 0);
          }
        }
      }
    }
  }
};

TEST_CASE("serving over 2,000 random schedules keeps S1 S3 S4") {
  // TESSERA_SIM_SEED=N runs one schedule and prints its steps.
  const char* one = std::getenv("TESSERA_SIM_SEED");
  const uint64_t first = one != nullptr ? std::stoull(one) : 1;
  const uint64_t last = one != nullptr ? first : 2000;
  for (uint64_t seed = first; seed <= last; ++seed) {
    INFO("seed " << seed);
    Sim sim(seed);
    const int steps = 20 + static_cast<int>(sim.rng() % 20);
    for (int step = 0; step < steps; ++step) {
      const int what = sim.rng() % 10;
      if (one != nullptr) {
        std::string state;
        for (auto& s : sim.subs) {
          const StoreStatus st = s.store->Status();
          absl::StrAppend(&state, " ", st.version, "/", st.newest_version, st.pinned ? "p" : "");
        }
        std::fprintf(stderr, "step %d: action %d; newest %lu relay %lu; subscribers%s\n", step,
                     what, sim.newest, sim.relay->Status().version, state.c_str());
      }
      if (what < 3) {
        sim.Publish();  // (a frozen driver: rounds without a publication)
      } else if (what == 3) {
        sim.relay = sim.NewStore();  // the relay restarted: the newest version in full
        if (sim.newest != 0) sim.FeedRelay(sim.FullOf(sim.models.back(), sim.newest));
      } else if (what == 4) {
        Subscriber& s = sim.subs[sim.rng() % sim.subs.size()];
        s.store = sim.NewStore();  // restarted empty
        s.last_served = 0;
      } else if (what == 5) {
        Subscriber& s = sim.subs[sim.rng() % sim.subs.size()];
        const std::vector<uint64_t> kept = s.store->Status().kept_versions;
        if (!kept.empty()) {
          const uint64_t v = kept[sim.rng() % kept.size()];
          if (v != 0 && s.store->Rollback(v).ok()) s.rolled_back = true;
        }
      } else if (what == 6) {
        Subscriber& s = sim.subs[sim.rng() % sim.subs.size()];
        if (s.store->pinned()) REQUIRE(s.store->Resume().ok());
      } else {
        sim.Subscribe(sim.subs[sim.rng() % sim.subs.size()]);
      }
      sim.Check("after a step");
    }
    // Faults stop: every replica resumes and catches up within a few rounds (S4).
    sim.Publish();
    for (auto& s : sim.subs) {
      if (s.store->pinned()) REQUIRE(s.store->Resume().ok());
    }
    for (int round = 0; round < 10; ++round) {
      for (auto& s : sim.subs) {
        const std::vector<v1::SubscribeEvent> events =
            EventsFrom(*sim.relay, s.store->Status().newest_version);
        StreamAssembler assembler(s.store.get());
        for (const auto& e : events) REQUIRE(assembler.Take(e).ok());
      }
    }
    for (auto& s : sim.subs) REQUIRE(s.store->Status().version == sim.newest);
    sim.Check("at the end");
  }
}

}  // namespace
}  // namespace tessera::serving
