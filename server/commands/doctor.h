// `glmserve doctor [--model DIR] [--json]`: checks what troubleshooting guides make people check
// by hand; each check is OK/WARN/FAIL with the fix in one line. Exit 1 when any check FAILs, 2 on
// bad flags. LibTorch- and protobuf-free (the model check is runtime/inspect.h's strict validation).
#pragma once

namespace glmserve {

int RunDoctor(int argc, char** argv);  // argv[0] is "doctor"

}  // namespace glmserve
