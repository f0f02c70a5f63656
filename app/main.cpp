// lowsync: one SPMD executable. Every rank parses the same command line and job; rank 0 reports.
//
// Exit status (README "Signals and exit codes"): 0 done; 1 an error (job, model, input, output, or
// a rank failing mid-job); 2 a command-line error; 3 an internal error; 75 (kExitStopped) a run
// stopped by SIGTERM, SIGINT or SIGUSR1 between batches, to be resumed; 128 + N a run stopped at
// once by a second signal N.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "app/inspect.h"
#include "io/error.h"
#include "io/job_config.h"
#include "io/log.h"
#include "jobs/calibrate.h"
#include "jobs/plan_job.h"
#include "jobs/profile_job.h"
#include "jobs/run_job.h"
#include "mpi_comm/communicator.h"
#include "mpi_comm/mpi_session.h"

#ifndef LOWSYNC_VERSION
#define LOWSYNC_VERSION "dev"
#endif

namespace po = boost::program_options;
using namespace lowsync;

namespace {

const char* kUsage =
    "usage: lowsync run JOB.yaml [--set key=value ...] [--resume] [--quiet]\n"
    "       lowsync calibrate JOB.yaml [--set key=value ...]   (under mpirun -np parallel.tp)\n"
    "       lowsync profile JOB.yaml [--set key=value ...] [--out profile.yaml] [--budget SECONDS]\n"
    "                                   (under mpirun: the ranks' compute and links, for planning)\n"
    "       lowsync plan JOB.yaml [--set key=value ...] [--out plan.yaml] [--candidates FILE.json]\n"
    "                                   (under mpirun: predicts every plan this world allows, writes the best)\n"
    "       lowsync inspect MODEL_DIR\n"
    "       lowsync --version | --help | SUBCOMMAND --help\n"
    "Launch with mpirun for several ranks; see README.md for the job YAML reference.\n";

// One description per subcommand: what `lowsync SUBCOMMAND --help` prints and what its parser
// accepts, so the two cannot drift apart. The positional argument (JOB.yaml or MODEL_DIR) is a
// hidden option, named in the usage line instead.
struct Subcommand {
  std::string usage, summary;
  po::options_description visible, hidden{"positional"};
  po::positional_options_description positional;
  Subcommand(std::string u, std::string s) : usage(std::move(u)), summary(std::move(s)), visible("options") {}
};

Subcommand describe(const std::string& command, std::vector<std::string>& overrides) {
  if (command == "inspect") {
    Subcommand c("lowsync inspect MODEL_DIR", "Prints a model's architecture, sizes, parameters and memory.");
    c.visible.add_options()("help,h", "this help");
    c.hidden.add_options()("model", po::value<std::string>(), "model directory");
    c.positional.add("model", 1);
    return c;
  }
  static const std::map<std::string, std::pair<std::string, std::string>> text = {
      {"run",
       {"lowsync run JOB.yaml [options]",
        "Runs a job: prompts from its input HDF5, results to its output HDF5, a run report at the end.\n"
        "SIGTERM, SIGINT or SIGUSR1 stop it between batches (exit 75; --resume continues);\n"
        "a second signal stops it at once."}},
      {"calibrate",
       {"lowsync calibrate JOB.yaml [options]   (under mpirun -np parallel.tp)",
        "Measures each layer's sensitivity to Sync-Point Drop and writes calibrate.output."}},
      {"profile",
       {"lowsync profile JOB.yaml [options]   (under mpirun, with the job's ranks)",
        "Measures every rank's compute and the links between ranks, for the planner."}},
      {"plan",
       {"lowsync plan JOB.yaml [options]   (under mpirun, with the job's ranks)",
        "Predicts every plan this world allows, prints them, and writes the best."}},
  };
  const auto& [usage, summary] = text.at(command);
  Subcommand c(usage, summary);
  c.visible.add_options()("help,h", "this help")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing()->value_name("KEY=VALUE"),
      "override a job key: key=value (dotted for nested keys; paths relative to the working directory)")(
      "quiet,q", po::bool_switch(), "print only errors and the final summary");
  if (command == "run")
    c.visible.add_options()("resume", po::bool_switch(), "continue an interrupted job's output file");
  else if (command == "plan")
    c.visible.add_options()("out", po::value<std::string>()->value_name("FILE"), "the plan to write (default: the job's plan.output)")(
        "candidates", po::value<std::string>()->default_value("")->value_name("FILE.json"), "also write every candidate as JSON here");
  else if (command == "profile")
    c.visible.add_options()("out", po::value<std::string>()->default_value("profile.yaml")->value_name("FILE"), "the profile to write")(
        "budget", po::value<double>()->default_value(15.0)->value_name("SECONDS"), "seconds the measurements aim for");
  c.hidden.add_options()("job", po::value<std::string>(), "job YAML");
  c.positional.add("job", 1);
  return c;
}

void print_help(const Subcommand& c) {
  std::ostringstream s;
  s << "usage: " << c.usage << "\n" << c.summary << "\n\n" << c.visible;
  std::fputs(s.str().c_str(), stdout);
}

// Parses a subcommand's arguments and runs it; returns the exit status.
int subcommand(const std::string& command, const std::vector<std::string>& args, bool root) {
  std::vector<std::string> overrides;
  const Subcommand c = describe(command, overrides);
  po::options_description all;
  all.add(c.visible).add(c.hidden);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).positional(c.positional).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (root) print_help(c);
    return 0;
  }
  if (command == "inspect") {
    if (!vm.count("model")) throw po::error("inspect takes one argument: MODEL_DIR");
    log::init(root, false);
    inspect_model(vm["model"].as<std::string>());
    return 0;
  }
  if (!vm.count("job")) throw po::error(command + " needs a job file: " + c.usage);
  log::init(root, vm["quiet"].as<bool>());
  const JobConfig job = load_job_config(vm["job"].as<std::string>(), overrides);
  if (command == "run") return run_job(job, vm["resume"].as<bool>());
  if (command == "calibrate")
    calibrate_spd(job);
  else if (command == "plan")
    plan_job(job, vm.count("out") ? vm["out"].as<std::string>() : job.plan.output, vm["candidates"].as<std::string>());
  else
    profile_job(job, vm["out"].as<std::string>(), vm["budget"].as<double>());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  const bool root = mpi.rank() == 0;
  auto report = [&](const std::string& msg) {
    if (root) log::error(msg);
  };
  if (argc < 2) {
    if (root) std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "run" || command == "calibrate" || command == "profile" || command == "plan" ||
        command == "inspect")
      return subcommand(command, args, root);
    if (command == "--help" || command == "-h" || command == "help") {
      if (root) std::fputs(kUsage, stdout);
      return 0;
    }
    if (command == "--version" || command == "-V" || command == "version") {
      if (root) std::printf("lowsync %s\n", LOWSYNC_VERSION);
      return 0;
    }
    report("unknown command '" + command + "'; expected run, calibrate, profile, plan or inspect (see lowsync --help)");
    return 2;
  } catch (const UserError& e) {
    report(e.what());
    return 1;
  } catch (const AgreedError& e) {  // a setup error on some rank, known to all ranks
    report(e.what());
    return 1;
  } catch (const po::error& e) {
    report(std::string("command line: ") + e.what() + " (see lowsync " +
           (command.starts_with("-") ? "--help" : command + " --help") + ")");
    return 2;
  } catch (const std::exception& e) {
    report(std::string("internal error: ") + e.what());
    return 3;
  }
}
