# Faults in a data-parallel job (run by CTest as `cmake -P` with MPIEXEC, TRAIN = dp_train, WORK):
#   - ranks started with different settings are refused with a message;
#   - a rank killed with SIGKILL mid-run ends the job, with a message, in bounded time;
#   - the last checkpoint stays good: the run resumes from it on 1 rank and on 2 ranks;
#   - a rank that stops (SIGSTOP: alive but silent, which the MPI runtime cannot see) is caught by
#     the collective timeout (watchdog), which aborts the job with its message, also while the
#     other rank waits on gradient buckets reduced during backward (--overlap on).
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
set(ckpt "${WORK}/run.safetensors")
set(common --net tiny --batch 8 --checkpoint "${ckpt}")

# run(<name> <max seconds> args...): runs mpirun, sets <name>_rc, <name>_out, <name>_seconds.
function(run name limit)
  string(TIMESTAMP start "%s")
  execute_process(COMMAND "${MPIEXEC}" --oversubscribe ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err TIMEOUT ${limit})
  string(TIMESTAMP stop "%s")
  math(EXPR seconds "${stop} - ${start}")
  message(STATUS "${name}: exit ${rc} after ${seconds} s")
  set(${name}_rc "${rc}" PARENT_SCOPE)
  set(${name}_out "${out}${err}" PARENT_SCOPE)
  set(${name}_seconds "${seconds}" PARENT_SCOPE)
endfunction()

function(expect condition text)
  if(NOT ${condition})
    message(FATAL_ERROR "${text}")
  endif()
endfunction()

# 1. Different settings on the two ranks (MPMD launch): refused before any step.
run(refused 60 -np 1 "${TRAIN}" ${common} --steps 2 --lr 0.01 : -np 1 "${TRAIN}" ${common} --steps 2 --lr 0.02)
if(refused_rc EQUAL 0 OR NOT refused_out MATCHES "rank 1 disagrees with rank 0 on the setting 'lr'")
  message(FATAL_ERROR "ranks with different --lr were not refused (exit ${refused_rc}):\n${refused_out}")
endif()
if(EXISTS "${ckpt}")
  message(FATAL_ERROR "a refused job wrote a checkpoint")
endif()

# 2. Rank 1 dies (SIGKILL) before step 7; rank 0 writes a checkpoint every 2 steps.
run(killed 90 -np 2 "${TRAIN}" ${common} --steps 100000 --every 2 --die-rank 1 --die-step 6 --die-signal KILL
    --timeout 20)
if(killed_rc STREQUAL "0" OR killed_rc MATCHES "timeout")
  message(FATAL_ERROR "the job went on after a rank was killed (exit ${killed_rc}):\n${killed_out}")
endif()
if(NOT killed_out MATCHES "rank 1 [^\n]*(signal 9|Killed)|vgg::distributed: rank 0")
  message(FATAL_ERROR "no message names the dead rank:\n${killed_out}")
endif()
if(killed_seconds GREATER 60)
  message(FATAL_ERROR "the job took ${killed_seconds} s to stop after a rank died")
endif()
if(NOT EXISTS "${ckpt}")
  message(FATAL_ERROR "no checkpoint survived the killed job:\n${killed_out}")
endif()

# 3. Resume from the surviving checkpoint on 1 rank (no new checkpoints), then on 2 ranks.
foreach(ranks 1 2)
  run(resumed${ranks} 60 -np ${ranks} "${TRAIN}" ${common} --steps 10 --resume)
  set(out "${resumed${ranks}_out}")
  if(NOT resumed${ranks}_rc EQUAL 0 OR NOT out MATCHES "resumed from step [46] on ${ranks} ranks"
     OR NOT out MATCHES "done: 10 steps on ${ranks} ranks, weights identical on every rank")
    message(FATAL_ERROR "resuming on ${ranks} rank(s) failed (exit ${resumed${ranks}_rc}):\n${out}")
  endif()
  if(out MATCHES "step [1-4] loss")
    message(FATAL_ERROR "the resumed run repeated steps before the checkpoint:\n${out}")
  endif()
endforeach()

# 4. Rank 1 stops (SIGSTOP) before step 4: only the 3-second collective timeout can end the job.
run(stopped 90 -np 2 "${TRAIN}" --net tiny --batch 8 --steps 100000 --die-rank 1 --die-step 3 --die-signal STOP
    --timeout 3)
if(stopped_rc STREQUAL "0" OR stopped_rc MATCHES "timeout")
  message(FATAL_ERROR "the job did not stop when a rank hung (exit ${stopped_rc}):\n${stopped_out}")
endif()
if(NOT stopped_out MATCHES "vgg::distributed: rank 0: [a-z ]+ of step 3 has not completed after 3.0 s")
  message(FATAL_ERROR "the watchdog's message is missing:\n${stopped_out}")
endif()
if(stopped_seconds GREATER 60)
  message(FATAL_ERROR "the job took ${stopped_seconds} s to stop after a rank hung")
endif()
# 5. The same with the gradient reduced during backward: rank 1 stops once past the step's first
#    collective, so rank 0 waits on its overlapped buckets (MPI_Waitall), which the watchdog covers.
run(stopped_overlap 90 -np 2 "${TRAIN}" --net tiny --batch 8 --steps 100000 --overlap on --bucket-mb 0.004
    --die-rank 1 --die-step 3 --die-signal STOP --die-in backward --timeout 3)
if(stopped_overlap_rc STREQUAL "0" OR stopped_overlap_rc MATCHES "timeout")
  message(FATAL_ERROR "the overlapped job did not stop when a rank hung (exit ${stopped_overlap_rc}):\n${stopped_overlap_out}")
endif()
if(NOT stopped_overlap_out MATCHES "vgg::distributed: rank 0: gradient allreduce \\(overlapped\\) of step 3 has not completed after 3.0 s")
  message(FATAL_ERROR "the watchdog's message for the overlapped buckets is missing:\n${stopped_overlap_out}")
endif()
if(stopped_overlap_seconds GREATER 60)
  message(FATAL_ERROR "the overlapped job took ${stopped_overlap_seconds} s to stop after a rank hung")
endif()
file(REMOVE_RECURSE "${WORK}")
