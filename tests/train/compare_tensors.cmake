# Shared by the fine-tuning CTest scripts: `fine_tune_helper compare A B` prints one line per
# tensor, "same NAME" or "differs NAME". expect_compare_groups checks two groups of tensor names
# (regexes of whole names): each must have the given count, and every tensor in it the given state.
# requires: HELPER (the fine_tune_helper executable).
function(expect_compare_groups a b first_names first_count first_state second_names second_count second_state)
  execute_process(COMMAND "${HELPER}" compare "${a}" "${b}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "fine_tune_helper compare failed (exit ${rc}):\n${out}${err}")
  endif()
  foreach(group IN ITEMS first second)
    string(REGEX MATCHALL "[a-z]+ ${${group}_names}" lines "${out}")
    list(LENGTH lines found)
    if(NOT found EQUAL ${${group}_count})
      message(FATAL_ERROR "${a} vs ${b}: expected ${${group}_count} tensors /${${group}_names}/, found ${found}:\n${out}")
    endif()
    foreach(line IN LISTS lines)
      if(NOT line MATCHES "^${${group}_state} ")
        message(FATAL_ERROR "${a} vs ${b}: expected every tensor /${${group}_names}/ '${${group}_state}', found '${line}':\n${out}")
      endif()
    endforeach()
  endforeach()
endfunction()
