# Configures, builds and runs the consumer project. MODE is "subdirectory" or "package"; for
# "package", vgg is first installed from BUILD_DIR into a private prefix.
set(work "${WORK_DIR}/${MODE}")
file(REMOVE_RECURSE "${work}")
if(MODE STREQUAL "package")
  execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${work}/prefix"
                  RESULT_VARIABLE rc OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cmake --install failed")
  endif()
  set(configure_args "-DCMAKE_PREFIX_PATH=${work}/prefix")
else()
  set(configure_args "-DVGG_SOURCE_DIR=${SOURCE_DIR}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${work}/build" -DCMAKE_BUILD_TYPE=Release
                        ${configure_args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the consumer failed:\n${out}${err}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${work}/build" RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer failed:\n${out}${err}")
endif()
execute_process(COMMAND "${work}/build/consumer" RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message(STATUS "${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer ran but failed (exit ${rc})")
endif()
