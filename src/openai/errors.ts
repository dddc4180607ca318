// Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}} with the HTTP status
// the API gives them. A batch line that fails carries the same body and status, so the server and
// `tierlm batch` report a bad request the same way.

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'rate_limit_error' | 'server_error';

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  get body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400: the body is wrong; `param` names the field at fault. */
export const invalid = (message: string, param: string | null = null, code: string | null = null) => new ApiError(400, message, 'invalid_request_error', param, code);

export const notFound = (message: string, param: string | null = null, code: string | null = null) => new ApiError(404, message, 'invalid_request_error', param, code);
