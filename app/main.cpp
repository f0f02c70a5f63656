// lowsync: one SPMD executable. Every rank parses the same command line and job; rank 0 reports.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "app/inspect.h"
#include "io/error.h"
#include "io/job_config.h"
#include "jobs/calibrate.h"
#include "jobs/plan_job.h"
#include "jobs/profile_job.h"
#include "jobs/run_job.h"
#include "mpi_comm/communicator.h"
#include "mpi_comm/mpi_session.h"

namespace po = boost::program_options;
using namespace lowsync;

namespace {

const char* kUsage =
    "usage: lowsync run JOB.yaml [--set key=value ...] [--resume]\n"
    "       lowsync calibrate JOB.yaml [--set key=value ...]   (under mpirun -np parallel.tp)\n"
    "       lowsync profile JOB.yaml [--set key=value ...] [--out profile.yaml] [--budget SECONDS]\n"
    "                                   (under mpirun: the ranks' compute and links, for planning)\n"
    "       lowsync plan JOB.yaml [--set key=value ...] [--out plan.yaml] [--candidates FILE.json]\n"
    "                                   (under mpirun: predicts every plan this world allows, writes the best)\n"
    "       lowsync inspect MODEL_DIR\n"
    "Launch with mpirun for several ranks; see README.md for the job YAML reference.\n";

// `run`, `calibrate` and `profile` take the same arguments: a job YAML and overrides; `run` and
// `calibrate` also --resume, `profile` where to write and how long to measure.
int job_command(const std::string& command, const std::vector<std::string>& args) {
  po::options_description opts(command + " options");
  std::vector<std::string> overrides;
  opts.add_options()("job", po::value<std::string>()->required(), "job YAML")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing(), "override a key: key=value");
  if (command == "plan")
    opts.add_options()("out", po::value<std::string>(), "the plan to write (default: the job's plan.output)")(
        "candidates", po::value<std::string>()->default_value(""), "also write every candidate as JSON here");
  else if (command == "profile")
    opts.add_options()("out", po::value<std::string>()->default_value("profile.yaml"), "the profile to write")(
        "budget", po::value<double>()->default_value(15.0), "seconds the measurements aim for");
  else
    opts.add_options()("resume", po::bool_switch(), "continue an interrupted job's output file");
  po::positional_options_description pos;
  pos.add("job", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).positional(pos).run(), vm);
  po::notify(vm);
  const JobConfig job = load_job_config(vm["job"].as<std::string>(), overrides);
  if (command == "calibrate")
    calibrate_spd(job);
  else if (command == "plan")
    plan_job(job, vm.count("out") ? vm["out"].as<std::string>() : job.plan.output, vm["candidates"].as<std::string>());
  else if (command == "profile")
    profile_job(job, vm["out"].as<std::string>(), vm["budget"].as<double>());
  else
    run_job(job, vm["resume"].as<bool>());
  return 0;
}

int inspect_command(const std::vector<std::string>& args) {
  if (args.size() != 1) throw po::error("inspect takes one argument: MODEL_DIR");
  inspect_model(args[0]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  auto report = [&](const std::string& msg) {
    if (mpi.rank() == 0) std::fprintf(stderr, "lowsync: error: %s\n", msg.c_str());
  };
  if (argc < 2) {
    if (mpi.rank() == 0) std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "run" || command == "calibrate" || command == "profile" || command == "plan")
      return job_command(command, args);
    if (command == "inspect") return inspect_command(args);
    if (command == "--help" || command == "-h" || command == "help") {
      if (mpi.rank() == 0) std::fputs(kUsage, stdout);
      return 0;
    }
    report("unknown command '" + command + "'; expected run, calibrate, profile, plan or inspect");
    return 2;
  } catch (const UserError& e) {
    report(e.what());
    return 1;
  } catch (const AgreedError& e) {  // a setup error on some rank, known to all ranks
    report(e.what());
    return 1;
  } catch (const po::error& e) {
    report(std::string("command line: ") + e.what());
    return 2;
  } catch (const std::exception& e) {
    report(std::string("internal error: ") + e.what());
    return 3;
  }
}
