#include "worker/job.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/wire.h"
#include "proto/job.pb.h"
#include "proto/tessera.pb.h"
#include "worker/ctr_trainer.h"
#include "worker/data/synthetic_ctr.h"
#include "worker/lr_trainer.h"
#include "worker/mlp_trainer.h"
#include "worker/models/backend.h"

namespace tessera {
namespace {

// Collects the text-format parser's first error with its line and column.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (first_.empty())
      first_ = absl::StrFormat("line %d, column %d: %s", line + 1, column + 1, message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

// An optimizer of the config (`field` names it in errors), checked as part of a table spec.
absl::StatusOr<OptimizerConfig> CheckedOptimizer(const v1::OptimizerSpec& o,
                                                 absl::string_view field) {
  v1::TableSpec spec;
  spec.set_name("optimizer");
  spec.set_kind(v1::TABLE_KIND_DENSE);
  spec.set_dense_size(1);
  *spec.mutable_optimizer() = o;
  absl::StatusOr<TableConfig> t = TableConfigFromProto(spec);
  if (t.ok()) t = ResolveTableConfig(*t);
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", t.status().message()));
  return t->optimizer;
}

// The config's optimizer, or `fallback`.
absl::StatusOr<OptimizerConfig> Optimizer(const v1::JobConfig& c, OptimizerConfig fallback) {
  if (!c.has_optimizer()) return fallback;
  return CheckedOptimizer(c.optimizer(), "optimizer");
}

// A job's data: the training set in memory, or a Criteo file still being parsed (its examples
// become readable in order while training goes on), and the evaluation set.
struct TextSets {
  std::unique_ptr<CriteoStream> stream;
  SparseDataset owned_train, test;

  const SparseDataset& train() const { return stream ? stream->data() : owned_train; }
  // Installs the stream's gate on `model` (so its Prepare waits for the examples it reads).
  void Gate(StepModel& model) const {
    if (stream) {
      CriteoStream* s = stream.get();
      model.SetDataGate([s](size_t n) { return s->WaitFor(n); });
    }
  }
};

// Which worker reads: Criteo lines outside its batches are not parsed.
struct Shard {
  uint32_t worker = 0, num_workers = 1;
  uint32_t batch_size = 1;
  bool Wants(size_t example) const { return example / batch_size % num_workers == worker; }
};

absl::StatusOr<std::shared_ptr<TextSets>> ReadText(const v1::JobConfig& c, const Shard& shard) {
  const bool criteo = c.has_criteo();
  const v1::TextData& t = criteo ? c.criteo() : c.libsvm();
  auto sets = std::make_shared<TextSets>();
  if (criteo) {  // parsed while training reads it
    absl::StatusOr<std::unique_ptr<CriteoStream>> stream =
        CriteoStream::Open(t.train(), [shard](size_t i) { return shard.Wants(i); });
    if (!stream.ok()) return stream.status();
    sets->stream = *std::move(stream);
  } else {
    absl::StatusOr<SparseDataset> train = ReadLibsvm(t.train());
    if (!train.ok()) return train.status();
    sets->owned_train = *std::move(train);
  }
  if (!t.test().empty()) {
    absl::StatusOr<SparseDataset> test = criteo ? ReadCriteo(t.test()) : ReadLibsvm(t.test());
    if (!test.ok()) return test.status();
    sets->test = *std::move(test);
  }
  if (!criteo) {  // libsvm labels are often -1 / +1
    for (SparseDataset* d : {&sets->owned_train, &sets->test}) {
      for (float& y : d->labels) y = y > 0 ? 1.0f : 0.0f;
    }
  }
  return sets;
}

absl::StatusOr<std::shared_ptr<TextSets>> SyntheticCtr(const v1::SyntheticCtrData& s) {
  PlantedCtrOptions o;
  if (s.fields() > 0) o.num_fields = s.fields();
  if (s.vocabulary() > 0) o.vocabulary = s.vocabulary();
  if (s.dense() > 0) o.num_dense = s.dense();
  if (s.train_examples() > 0) o.train_examples = s.train_examples();
  if (s.test_examples() > 0) o.test_examples = s.test_examples();
  if (s.seed() > 0) o.seed = s.seed();
  if (o.num_fields > 64 || o.num_dense > 1024 || o.train_examples > 100'000'000) {
    return absl::InvalidArgumentError(
        "synthetic_ctr: at most 64 fields, 1024 dense features and "
        "1e8 training examples");
  }
  PlantedCtrProblem p = MakePlantedCtrProblem(o);
  LogInfo("synthetic CTR data: planted model's test AUC %.4f", Auc(p.test_logits, p.test.labels));
  auto sets = std::make_shared<TextSets>();
  sets->owned_train = std::move(p.train);
  sets->test = std::move(p.test);
  return sets;
}

// The backend line every worker logs at start.
void LogBackend(const absl::Status& gpu) {
  if (gpu.ok()) {
    LogInfo("backend: GPU");
  } else {
    LogInfo("backend: CPU (%s)", gpu.message());
  }
}

// BACKEND_CPU: the CPU; GPU: the GPU or an error; AUTO: the GPU where there is one.
absl::StatusOr<std::unique_ptr<NnBackend>> ChooseBackend(const v1::JobConfig& c) {
  if (c.backend() == v1::BACKEND_CPU) return MakeCpuBackend();
  absl::StatusOr<std::unique_ptr<NnBackend>> gpu = MakeGpuBackend();
  if (!gpu.ok() && c.backend() == v1::BACKEND_GPU) return gpu.status();
  LogBackend(gpu.status());
  return gpu.ok() ? *std::move(gpu) : MakeCpuBackend();
}

absl::StatusOr<PreparedJob> PrepareMlp(const v1::JobConfig& c, std::unique_ptr<NnBackend> backend) {
  if (!c.has_idx()) return absl::InvalidArgumentError("the mlp model reads idx data");
  const v1::IdxData& data = c.idx();
  absl::StatusOr<IdxDataset> train = ReadIdxDataset(data.train_images(), data.train_labels());
  if (!train.ok()) return train.status();
  if (data.max_train_examples() > 0 && data.max_train_examples() < train->num_examples) {
    train->num_examples = data.max_train_examples();
    train->features.resize(size_t{train->num_examples} * train->num_features);
    train->labels.resize(train->num_examples);
  }
  MlpTrainOptions o;
  o.shape.sizes = {train->num_features};
  for (uint32_t h : c.mlp().hidden()) o.shape.sizes.push_back(h);
  o.shape.sizes.push_back(std::max<uint32_t>(train->num_classes, 2));
  o.batch_size = c.batch_size() > 0 ? c.batch_size() : 128;
  o.seed = c.seed();
  o.prefix = c.name();
  absl::StatusOr<OptimizerConfig> opt = Optimizer(c, o.optimizer);
  if (!opt.ok()) return opt.status();
  o.optimizer = *opt;
  auto owned = std::make_shared<IdxDataset>(*std::move(train));
  PreparedJob job;
  job.data = owned;
  job.backend = backend->name();
  job.model = std::make_unique<MlpStepModel>(*owned, o, std::move(backend));
  job.description =
      absl::StrFormat("MLP %s on %u examples, batch %u", absl::StrJoin(o.shape.sizes, "-"),
                      owned->num_examples, o.batch_size);
  if (!data.test_images().empty()) {
    const std::string images = data.test_images(), labels = data.test_labels();
    job.evaluate = [o, images, labels](Client& client) -> absl::StatusOr<std::string> {
      absl::StatusOr<IdxDataset> test = ReadIdxDataset(images, labels);
      if (!test.ok()) return test.status();
      absl::StatusOr<MlpParams> params = PullMlpParams(client, o);
      if (!params.ok()) return params.status();
      return absl::StrFormat("test accuracy %.4f (%u examples)",
                             MlpAccuracy(o.shape, *params, *test), test->num_examples);
    };
  }
  return job;
}

absl::StatusOr<PreparedJob> PrepareCtr(const v1::JobConfig& c, std::unique_ptr<NnBackend> backend,
                                       Shard shard) {
  shard.batch_size = c.batch_size() > 0 ? c.batch_size() : 256;
  if (!c.has_synthetic_ctr() && !c.has_criteo()) {
    return absl::InvalidArgumentError("the ctr model reads synthetic_ctr or criteo data");
  }
  absl::StatusOr<std::shared_ptr<TextSets>> sets =
      c.has_criteo() ? ReadText(c, shard) : SyntheticCtr(c.synthetic_ctr());
  if (!sets.ok()) return sets.status();
  const SparseDataset& train = (*sets)->train();
  CtrTrainOptions o;
  o.shape.fields = static_cast<uint32_t>(train.num_examples() > 0 ? train.offsets[1] : 0);
  o.shape.dense = train.num_dense;
  if (c.ctr().embedding_dim() > 0) o.shape.dim = c.ctr().embedding_dim();
  if (c.ctr().hidden_size() > 0)
    o.shape.hidden.assign(c.ctr().hidden().begin(), c.ctr().hidden().end());
  if (c.ctr().embedding_stddev() > 0) o.embedding_stddev = c.ctr().embedding_stddev();
  if (c.ctr().has_embedding_optimizer()) {
    absl::StatusOr<OptimizerConfig> e =
        CheckedOptimizer(c.ctr().embedding_optimizer(), "ctr.embedding_optimizer");
    if (!e.ok()) return e.status();
    o.embedding_optimizer = *e;
  }
  if (c.ctr().has_embedding_lifecycle()) {
    absl::StatusOr<LifecycleConfig> l =
        LifecycleFromProto(c.ctr().embedding_lifecycle(), "ctr.embedding_lifecycle");
    if (!l.ok()) return l.status();
    o.embedding_lifecycle = *l;
  }
  o.batch_size = shard.batch_size;
  o.seed = c.seed();
  o.prefix = c.name();
  absl::StatusOr<OptimizerConfig> opt = Optimizer(c, o.optimizer);
  if (!opt.ok()) return opt.status();
  o.optimizer = *opt;
  if (absl::Status s = CheckCtrData(train, o.shape, /*check_examples=*/!(*sets)->stream); !s.ok()) {
    return s;
  }
  PreparedJob job;
  job.data = *sets;
  job.backend = backend->name();
  std::unique_ptr<NnBackend> key_backend;  // (Prepare runs beside Compute: its own context)
  if (backend->name() == "gpu") {
    absl::StatusOr<std::unique_ptr<NnBackend>> gpu = MakeGpuBackend();
    if (gpu.ok()) key_backend = *std::move(gpu);
  }
  job.model = std::make_unique<CtrStepModel>(train, o, std::move(backend), std::move(key_backend));
  (*sets)->Gate(*job.model);
  job.description = absl::StrFormat(
      "CTR embedding+MLP: %u fields x dim %u, %u dense, MLP %s on %u examples, batch %u",
      o.shape.fields, o.shape.dim, o.shape.dense, absl::StrJoin(o.shape.Mlp().sizes, "-"),
      train.num_examples(), o.batch_size);
  if ((*sets)->test.num_examples() > 0) {
    std::shared_ptr<TextSets> keep = *sets;
    job.evaluate = [o, keep](Client& client) -> absl::StatusOr<std::string> {
      absl::StatusOr<double> auc = CtrAuc(client, o, keep->test);
      if (!auc.ok()) return auc.status();
      return absl::StrFormat("test AUC %.4f (%u examples)", *auc, keep->test.num_examples());
    };
    job.test_auc = [o, keep](const ParameterReader& reader) {
      return CtrAuc(reader, o, keep->test);
    };
  }
  return job;
}

absl::StatusOr<PreparedJob> PrepareLr(const v1::JobConfig& c, Shard shard) {
  shard.batch_size = c.batch_size() > 0 ? c.batch_size() : 512;
  if (!c.has_libsvm() && !c.has_criteo() && !c.has_synthetic_ctr()) {
    return absl::InvalidArgumentError("the lr model reads libsvm, criteo or synthetic_ctr data");
  }
  absl::StatusOr<std::shared_ptr<TextSets>> sets =
      c.has_synthetic_ctr() ? SyntheticCtr(c.synthetic_ctr()) : ReadText(c, shard);
  if (!sets.ok()) return sets.status();
  // (A Criteo file holds binary features and 0/1 labels by construction.)
  for (const SparseDataset* d : {&(*sets)->owned_train, &(*sets)->test}) {
    if (absl::Status s = CheckLrData(*d); !s.ok()) return s;
  }
  LrModelOptions o;
  o.batch_size = shard.batch_size;
  o.table = absl::StrCat(c.name(), ".w");
  absl::StatusOr<OptimizerConfig> opt = Optimizer(c, o.optimizer);
  if (!opt.ok()) return opt.status();
  o.optimizer = *opt;
  std::unique_ptr<LrGpu> gpu;
  if (c.backend() != v1::BACKEND_CPU) {
    absl::StatusOr<std::unique_ptr<LrGpu>> g = LrGpu::Create();
    if (!g.ok() && c.backend() == v1::BACKEND_GPU) return g.status();
    LogBackend(g.status());
    if (g.ok()) gpu = *std::move(g);
  }
  PreparedJob job;
  job.backend = gpu != nullptr ? "gpu" : "cpu";
  job.data = *sets;
  job.model = std::make_unique<LrStepModel>((*sets)->train(), o, std::move(gpu));
  (*sets)->Gate(*job.model);
  job.description = absl::StrFormat("sparse logistic regression on %u examples, batch %u",
                                    (*sets)->train().num_examples(), o.batch_size);
  if ((*sets)->test.num_examples() > 0) {
    std::shared_ptr<TextSets> keep = *sets;
    job.evaluate = [o, keep](Client& client) -> absl::StatusOr<std::string> {
      absl::StatusOr<double> auc = LrAuc(client, o, keep->test);
      if (!auc.ok()) return auc.status();
      return absl::StrFormat("test AUC %.4f (%u examples)", *auc, keep->test.num_examples());
    };
  }
  return job;
}

}  // namespace

absl::StatusOr<PreparedJob> PrepareJob(const v1::JobConfig& c, uint32_t worker,
                                       uint32_t num_workers) {
  const Shard shard{.worker = worker, .num_workers = std::max<uint32_t>(num_workers, 1)};
  absl::StatusOr<PreparedJob> job = absl::InvalidArgumentError("the job needs a model");
  if (c.has_mlp() || c.has_ctr()) {
    absl::StatusOr<std::unique_ptr<NnBackend>> backend = ChooseBackend(c);
    if (!backend.ok()) return backend.status();
    job = c.has_mlp() ? PrepareMlp(c, *std::move(backend))
                      : PrepareCtr(c, *std::move(backend), shard);
  } else if (c.has_lr()) {
    job = PrepareLr(c, shard);
  }
  if (!job.ok()) return job.status();
  job->loop.epochs = c.epochs() > 0 ? static_cast<int>(c.epochs()) : 1;
  job->loop.prefetch = c.prefetch();
  if (c.final_gradient_scale() < 0 || c.final_gradient_scale() > 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "final_gradient_scale must be in [0, 1] (0: no decay); got %g", c.final_gradient_scale()));
  }
  job->loop.final_gradient_scale = c.final_gradient_scale() > 0 ? c.final_gradient_scale() : 1.0f;
  job->loop.max_steps = c.max_steps();
  if (c.has_checkpoint() && c.checkpoint().dir().empty()) {
    return absl::InvalidArgumentError("checkpoint.dir must name the servers' --checkpoint_dir");
  }
  return job;
}

absl::StatusOr<std::unique_ptr<v1::JobConfig>> LoadJobConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot open the job config %s", path));
  std::stringstream text;
  text << in.rdbuf();
  auto config = std::make_unique<v1::JobConfig>();
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text.str(), config.get())) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", path, errors.first()));
  }
  if (config->name().empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: the job needs a name", path));
  }
  return config;
}

}  // namespace tessera
